//! Per-kernel CPU time of the non-matmul ops of one `cpu-small` training step (8×256 tokens,
//! width 256, 4 layers, 4 heads, vocab 4096), through the public [`Backend`] trait, so the figures
//! stay comparable across kernel rewrites. Also times the step's matmuls for their share.
//!
//! `cargo run --release -p kiln-engine --example kernel_bench [threads] [reps]`
//!
//! With 1 thread everything runs inside a one-thread rayon pool and is timed with that thread's
//! CPU clock (immune to other processes on a loaded machine). With more threads it prints the
//! process CPU time (work + rayon overhead, spinning included) and wall time per call.

use kiln_engine::backend::{Act, AdamHyper, AttnDims, Backend, MatDims, NormKind, View};
use kiln_engine::cpu::{CpuBackend, CpuBuf};
use kiln_engine::Rng;

fn clock(id: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain syscall writing into `ts`.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

struct Timer {
    threads: usize,
}

impl Timer {
    /// (cpu seconds, wall seconds) per call of `f`, best of 3 batches of `reps` calls.
    fn time(&self, reps: usize, mut f: impl FnMut()) -> (f64, f64) {
        f();
        let cpu_id = if self.threads == 1 {
            libc::CLOCK_THREAD_CPUTIME_ID
        } else {
            libc::CLOCK_PROCESS_CPUTIME_ID
        };
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            let (c0, w0) = (clock(cpu_id), clock(libc::CLOCK_MONOTONIC));
            for _ in 0..reps {
                f();
            }
            let (c1, w1) = (clock(cpu_id), clock(libc::CLOCK_MONOTONIC));
            best.0 = best.0.min((c1 - c0) / reps as f64);
            best.1 = best.1.min((w1 - w0) / reps as f64);
        }
        best
    }
}

fn buf(be: &CpuBackend, rng: &mut Rng, n: usize, std: f32) -> CpuBuf {
    let b = be.alloc(n).unwrap();
    let host: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * std).collect();
    be.write(View::new(&b, 0, n), &host);
    b
}

fn all(b: &CpuBuf, n: usize) -> View<'_, CpuBuf> {
    View::new(b, 0, n)
}

fn run(threads: usize, reps: usize) {
    let be = CpuBackend::new(threads);
    let mut rng = Rng::new(1);
    let (bsz, t, c, l, nh, vocab) = (8usize, 256usize, 256usize, 4usize, 4usize, 4096usize);
    let bt = bsz * t;
    let nparams = 4_273_664usize;
    let d = AttnDims {
        b: bsz,
        t,
        n_head: nh,
        n_kv: nh,
        head_dim: c / nh,
    };
    let x = buf(&be, &mut rng, bt * 4 * c, 1.0);
    let y = buf(&be, &mut rng, bt * 4 * c, 1.0);
    let dy = buf(&be, &mut rng, bt * 4 * c, 1.0);
    let wgt = buf(&be, &mut rng, 4 * c, 1.0);
    let bias = buf(&be, &mut rng, 4 * c, 1.0);
    let dw = buf(&be, &mut rng, 4 * c, 0.0);
    let db = buf(&be, &mut rng, 4 * c, 0.0);
    let stats = buf(&be, &mut rng, 2 * bt, 0.0);
    let qkv = buf(&be, &mut rng, bt * 3 * c, 1.0);
    let dqkv = buf(&be, &mut rng, bt * 3 * c, 0.0);
    let probs = buf(&be, &mut rng, be.attention_scratch_len(d), 0.0);
    let logits_src = buf(&be, &mut rng, bt * vocab, 2.0);
    let logits = buf(&be, &mut rng, bt * vocab, 0.0);
    let losses = buf(&be, &mut rng, bt, 0.0);
    let wte = buf(&be, &mut rng, vocab * c, 0.02);
    let wpe = buf(&be, &mut rng, t * c, 0.02);
    let p = buf(&be, &mut rng, nparams, 0.02);
    let g = buf(&be, &mut rng, nparams, 0.01);
    let m = buf(&be, &mut rng, nparams, 0.0);
    let v = buf(&be, &mut rng, nparams, 0.0);
    let ids: Vec<u32> = (0..bt)
        .map(|i| (i * 2654435761usize % vocab) as u32)
        .collect();
    let ones = vec![1f32; bt];
    let tm = Timer { threads };
    be.norm_forward(
        NormKind::LayerNorm,
        all(&y, bt * c),
        all(&stats, 2 * bt),
        all(&x, bt * c),
        Some(all(&wgt, c)),
        Some(all(&bias, c)),
        bt,
        c,
        1e-5,
    );
    be.attention_forward(
        all(&y, bt * c),
        all(&probs, be.attention_scratch_len(d)),
        all(&qkv, bt * 3 * c),
        d,
    );
    let hyper = AdamHyper {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step: 3,
    };
    // (name, calls per step, closure)
    type Job<'a> = Box<dyn FnMut() + 'a>;
    let jobs: Vec<(&str, usize, Job)> = vec![
        (
            "embedding_forward",
            1,
            Box::new(|| {
                be.embedding_forward(
                    all(&y, bt * c),
                    all(&wte, vocab * c),
                    Some(all(&wpe, t * c)),
                    &ids,
                    t,
                    0,
                    c,
                )
            }),
        ),
        (
            "norm_forward",
            2 * l + 1,
            Box::new(|| {
                be.norm_forward(
                    NormKind::LayerNorm,
                    all(&y, bt * c),
                    all(&stats, 2 * bt),
                    all(&x, bt * c),
                    Some(all(&wgt, c)),
                    Some(all(&bias, c)),
                    bt,
                    c,
                    1e-5,
                )
            }),
        ),
        (
            "add_bias (all widths)",
            l,
            Box::new(|| {
                for w in [3 * c, c, 4 * c, c] {
                    be.add_bias(all(&y, bt * w), all(&bias, w), bt, w);
                }
            }),
        ),
        (
            "copy residual",
            2 * l,
            Box::new(|| be.copy(all(&y, bt * c), all(&x, bt * c))),
        ),
        (
            "act_forward gelu",
            l,
            Box::new(|| be.act_forward(Act::GeluTanh, all(&y, bt * 4 * c), all(&x, bt * 4 * c))),
        ),
        (
            "attention_forward",
            l,
            Box::new(|| {
                be.attention_forward(
                    all(&y, bt * c),
                    all(&probs, be.attention_scratch_len(d)),
                    all(&qkv, bt * 3 * c),
                    d,
                )
            }),
        ),
        (
            "cross_entropy+grad",
            1,
            Box::new(|| {
                be.copy(all(&logits, bt * vocab), all(&logits_src, bt * vocab));
                be.cross_entropy(
                    all(&logits, bt * vocab),
                    all(&losses, bt),
                    &ids,
                    &ones,
                    bt,
                    vocab,
                    None,
                    Some(1.0 / bt as f32),
                )
            }),
        ),
        (
            "  (copy logits, in the line above)",
            1,
            Box::new(|| be.copy(all(&logits, bt * vocab), all(&logits_src, bt * vocab))),
        ),
        (
            "fill dres + zero grads",
            1,
            Box::new(|| {
                be.fill(all(&y, bt * c), 0.0);
                be.fill(all(&m, nparams), 0.0);
            }),
        ),
        (
            "norm_backward",
            2 * l + 1,
            Box::new(|| {
                be.norm_backward(
                    NormKind::LayerNorm,
                    all(&y, bt * c),
                    Some(all(&dw, c)),
                    Some(all(&db, c)),
                    all(&dy, bt * c),
                    all(&x, bt * c),
                    all(&stats, 2 * bt),
                    Some(all(&wgt, c)),
                    bt,
                    c,
                )
            }),
        ),
        (
            "bias_backward (all widths)",
            l,
            Box::new(|| {
                for w in [3 * c, c, 4 * c, c] {
                    be.bias_backward(all(&db, w), all(&dy, bt * w), bt, w);
                }
            }),
        ),
        (
            "act_backward gelu",
            l,
            Box::new(|| {
                be.act_backward(
                    Act::GeluTanh,
                    all(&y, bt * 4 * c),
                    all(&dy, bt * 4 * c),
                    all(&x, bt * 4 * c),
                )
            }),
        ),
        (
            "attention_backward",
            l,
            Box::new(|| {
                be.attention_backward(
                    all(&dqkv, bt * 3 * c),
                    all(&dy, bt * c),
                    all(&qkv, bt * 3 * c),
                    all(&probs, be.attention_scratch_len(d)),
                    d,
                )
            }),
        ),
        (
            "embedding_backward",
            1,
            Box::new(|| {
                be.embedding_backward(
                    all(&m, vocab * c),
                    Some(all(&v, t * c)),
                    all(&dy, bt * c),
                    &ids,
                    t,
                    c,
                )
            }),
        ),
        (
            "sum_squares grads",
            1,
            Box::new(|| {
                std::hint::black_box(be.sum_squares(all(&g, nparams)));
            }),
        ),
        (
            "adamw",
            1,
            Box::new(|| {
                be.adamw(
                    all(&p, nparams),
                    all(&g, nparams),
                    all(&m, nparams),
                    all(&v, nparams),
                    hyper,
                )
            }),
        ),
        (
            "matmuls (reference)",
            1,
            Box::new(|| {
                // forward: qkv, proj, fc, fc2 per layer + head; backward: 2 per forward matmul
                for _ in 0..l {
                    for (n, k) in [(3 * c, c), (c, c), (4 * c, c), (c, 4 * c)] {
                        let fw = MatDims {
                            m: bt,
                            n,
                            k,
                            trans_a: false,
                            trans_b: true,
                        };
                        be.matmul(
                            all(&y, bt * n),
                            all(&x, bt * k),
                            all(&p, n * k),
                            fw,
                            1.0,
                            0.0,
                        );
                        let dx = MatDims {
                            m: bt,
                            n: k,
                            k: n,
                            trans_a: false,
                            trans_b: false,
                        };
                        be.matmul(
                            all(&y, bt * k),
                            all(&dy, bt * n),
                            all(&p, n * k),
                            dx,
                            1.0,
                            0.0,
                        );
                        let dwd = MatDims {
                            m: n,
                            n: k,
                            k: bt,
                            trans_a: true,
                            trans_b: false,
                        };
                        be.matmul(
                            all(&m, n * k),
                            all(&dy, bt * n),
                            all(&x, bt * k),
                            dwd,
                            1.0,
                            1.0,
                        );
                    }
                }
                let fw = MatDims {
                    m: bt,
                    n: vocab,
                    k: c,
                    trans_a: false,
                    trans_b: true,
                };
                be.matmul(
                    all(&logits, bt * vocab),
                    all(&x, bt * c),
                    all(&wte, vocab * c),
                    fw,
                    1.0,
                    0.0,
                );
                let dx = MatDims {
                    m: bt,
                    n: c,
                    k: vocab,
                    trans_a: false,
                    trans_b: false,
                };
                be.matmul(
                    all(&dqkv, bt * c),
                    all(&logits_src, bt * vocab),
                    all(&wte, vocab * c),
                    dx,
                    1.0,
                    0.0,
                );
                let dwd = MatDims {
                    m: vocab,
                    n: c,
                    k: bt,
                    trans_a: true,
                    trans_b: false,
                };
                be.matmul(
                    all(&m, vocab * c),
                    all(&logits_src, bt * vocab),
                    all(&x, bt * c),
                    dwd,
                    1.0,
                    1.0,
                );
            }),
        ),
    ];
    println!(
        "{:<36} {:>5} {:>10} {:>10} {:>10}",
        "kernel (threads={threads})", "calls", "cpu ms", "wall ms", "cpu ms/step"
    );
    let mut total = 0.0;
    for (name, calls, mut f) in jobs {
        let (cpu, wall) = tm.time(reps, &mut f);
        let per_step = cpu * 1e3 * calls as f64;
        if !name.starts_with("  ") && !name.starts_with("matmuls") {
            total += per_step;
        }
        println!(
            "{name:<36} {calls:>5} {:>10.3} {:>10.3} {per_step:>10.2}",
            cpu * 1e3,
            wall * 1e3
        );
    }
    println!(
        "{:<36} {:>5} {:>10} {:>10} {total:>10.2}",
        "non-matmul total", "", "", ""
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool");
    pool.install(|| run(threads, reps));
}
