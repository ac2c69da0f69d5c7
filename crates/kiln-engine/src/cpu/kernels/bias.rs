//! Bias add and its backward (column sums of the output gradient, parallel over column chunks).

use super::*;

simd_fn! {
    /// `row += bias` on each row of `out` (also a GEMM row epilogue).
    pub(crate) fn add_bias_rows(out: &mut [f32], bias: &[f32]) {
        for row in out.chunks_exact_mut(bias.len()) {
            add_to(row, bias);
        }
    }
}

pub fn add_bias(out: &mut [f32], bias: &[f32], rows: usize, cols: usize) {
    let bias = &bias[..cols];
    out[..rows * cols]
        .par_chunks_mut(row_block(rows) * cols)
        .with_max_len(1)
        .for_each(|blk| add_bias_rows(blk, bias));
}

pub fn bias_backward(dbias: &mut [f32], dout: &[f32], rows: usize, cols: usize) {
    let cc = col_chunk(cols);
    dbias[..cols]
        .par_chunks_mut(cc)
        .enumerate()
        .with_max_len(1)
        .for_each(|(ci, db)| col_sum_chunk(db, dout, rows, cols, ci * cc));
}
