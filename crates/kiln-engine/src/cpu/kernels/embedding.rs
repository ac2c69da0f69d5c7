//! Token (+ learned position) embedding lookup and its scatter-add backward.

use super::*;

pub fn embedding_forward(
    out: &mut [f32],
    wte: &[f32],
    wpe: Option<&[f32]>,
    ids: &[u32],
    t: usize,
    pos0: usize,
    c: usize,
) {
    embedding_forward_at(out, wte, wpe, ids, c, |r| pos0 + r % t);
}

/// [`embedding_forward`] for one token per row, row `r` at position `pos[r]`.
pub fn embedding_rows(
    out: &mut [f32],
    wte: &[f32],
    wpe: Option<&[f32]>,
    ids: &[u32],
    pos: &[usize],
    c: usize,
) {
    assert_eq!(ids.len(), pos.len(), "embedding_rows: one position per id");
    embedding_forward_at(out, wte, wpe, ids, c, |r| pos[r]);
}

fn embedding_forward_at(
    out: &mut [f32],
    wte: &[f32],
    wpe: Option<&[f32]>,
    ids: &[u32],
    c: usize,
    pos_of: impl Fn(usize) -> usize + Sync,
) {
    out[..ids.len() * c]
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(r, o)| {
            let id = ids[r] as usize;
            o.copy_from_slice(&wte[id * c..(id + 1) * c]);
            if let Some(wpe) = wpe {
                let p = pos_of(r);
                o.iter_mut()
                    .zip(&wpe[p * c..(p + 1) * c])
                    .for_each(|(a, b)| *a += b);
            }
        });
}

pub fn embedding_backward(
    dwte: &mut [f32],
    dwpe: Option<&mut [f32]>,
    dout: &[f32],
    ids: &[u32],
    t: usize,
    c: usize,
) {
    // Parallel over column chunks: each task owns columns [c0, c0+w) of every table row.
    let cc = col_chunk(c);
    let nchunks = c.div_ceil(cc);
    let wte_p = SendPtr(dwte.as_mut_ptr());
    let wpe_p = dwpe.map(|p| SendPtr(p.as_mut_ptr()));
    (0..nchunks).into_par_iter().with_max_len(1).for_each(|ci| {
        let c0 = ci * cc;
        let wdt = cc.min(c - c0);
        for (r, &id) in ids.iter().enumerate() {
            let d = &dout[r * c + c0..r * c + c0 + wdt];
            // SAFETY: columns [c0, c0+wdt) of each row belong to this task only.
            let row = unsafe {
                std::slice::from_raw_parts_mut(wte_p.get().add(id as usize * c + c0), wdt)
            };
            row.iter_mut().zip(d).for_each(|(a, b)| *a += b);
            if let Some(p) = wpe_p {
                let pos = r % t;
                let row = unsafe { std::slice::from_raw_parts_mut(p.get().add(pos * c + c0), wdt) };
                row.iter_mut().zip(d).for_each(|(a, b)| *a += b);
            }
        }
    });
}
