//! kiln's side of `dev/gguf/speed-vs-llama-cpp.sh`: the figures `llama-bench` reports, on the
//! same GGUF file, plus what the issue asks beside them. Prints one JSON line:
//! load time (mmap + tensor table), prompt processing (`--pp` tokens in one pass, as
//! llama-bench's pp512: logits of the last token only), decode (`--tg` tokens one at a time from
//! an empty cache, as tg128), peak RSS (before the probe), and a memory-bandwidth probe run in
//! this process on the same threads, with decode as a fraction of it
//! (weight bytes per token × tokens/s ÷ probe bytes/s).
//!
//! usage: cargo run --release -p kiln-engine --example gguf_speed -- MODEL.gguf THREADS [PP] [TG] [REPS] [DEPTH]
//! (DEPTH: the decode starts after a prompt of that many tokens, as llama-bench's `-d`.)

use std::time::Instant;

use kiln_engine::llama::LlamaModel;
use rayon::prelude::*;

/// CPU seconds of the whole process (at 1 thread: tokens per CPU second, a steadier figure than
/// wall time on a loaded machine, for comparing kiln versions).
fn cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Read-bandwidth probe: sum a buffer far larger than the caches, split over the pool's
/// threads (as the decode's rows are); best of `reps`, in bytes/s. The buffer is on huge pages
/// as `GgufFile::load`'s weights are (the same `hugemem`), so the probe reads at least as fast
/// as the weights can.
fn bandwidth(bytes: usize, reps: usize) -> f64 {
    #[cfg(target_os = "linux")]
    let mut mem = kiln_engine::hugemem::HugeMem::new(bytes).expect("probe buffer");
    #[cfg(target_os = "linux")]
    // SAFETY: every bit pattern is a u64; align_to_mut leaves misaligned ends outside `v`.
    let (_, v, _) = unsafe { mem.bytes_mut().align_to_mut::<u64>() };
    #[cfg(not(target_os = "linux"))]
    let mut owned = vec![0u64; bytes / 8];
    #[cfg(not(target_os = "linux"))]
    let v = &mut owned[..];
    v.iter_mut().enumerate().for_each(|(i, x)| *x = i as u64);
    let bytes = v.len() * 8;
    let mut best = 0f64;
    for _ in 0..reps {
        let t = Instant::now();
        let s: u64 = v
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
            .reduce(|| 0, u64::wrapping_add);
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max(bytes as f64 / secs);
    }
    best
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: gguf_speed MODEL.gguf THREADS [PP=512] [TG=128] [REPS=2] [DEPTH=0]");
        std::process::exit(2);
    }
    let path = &args[1];
    let threads: usize = args[2].parse().expect("THREADS");
    let arg = |i: usize, d: usize| args.get(i).map_or(d, |v| v.parse().expect("a number"));
    let (pp, tg, reps, depth) = (arg(3, 512), arg(4, 128), arg(5, 2), arg(6, 0));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let t0 = Instant::now();
        let m = LlamaModel::load(std::path::Path::new(path)).expect("load");
        let load_s = t0.elapsed().as_secs_f64();
        let vocab = m.config.vocab as u64;
        // Token ids as llama-bench uses them: arbitrary, from a fixed generator.
        let mut rng = kiln_engine::Rng::new(1);
        let prompt: Vec<u32> = (0..pp).map(|_| rng.below(vocab) as u32).collect();
        let (mut pp_best, mut tg_best, mut tg_cpu_best) = (0f64, 0f64, 0f64);
        for _ in 0..reps {
            if pp > 0 {
                let mut s = m.session(pp);
                let t = Instant::now();
                m.forward_batch(&mut [&mut s], &vec![0; pp], &prompt, &[pp - 1])
                    .expect("prefill");
                pp_best = pp_best.max(pp as f64 / t.elapsed().as_secs_f64());
            }
            if tg > 0 {
                // DEPTH: decode after a prompt of that many tokens (llama-bench's `-d`), where
                // reading the KV cache is a real part of each token.
                let mut s = m.session(depth + tg);
                if depth > 0 {
                    let p: Vec<u32> = (0..depth).map(|_| rng.below(vocab) as u32).collect();
                    m.forward_batch(&mut [&mut s], &vec![0; depth], &p, &[depth - 1])
                        .expect("prefill");
                }
                let mut tok = 1u32;
                let t = Instant::now();
                let c = cpu_s();
                for _ in 0..tg {
                    let l = m.forward(&mut s, tok).expect("decode");
                    tok = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b }) as u32;
                }
                tg_best = tg_best.max(tg as f64 / t.elapsed().as_secs_f64());
                tg_cpu_best = tg_cpu_best.max(tg as f64 / (cpu_s() - c));
            }
        }
        let rss = peak_rss_mb();
        let bw = bandwidth(512 << 20, 3);
        let wb = m.weight_bytes_per_token() as f64;
        println!(
            "{{\"threads\":{threads},\"load_s\":{load_s:.3},\"pp_tps\":{pp_best:.2},\"tg_tps\":{tg_best:.2},\"tg_per_cpu_s\":{tg_cpu_best:.2},\"peak_rss_mb\":{rss:.1},\"probe_gbs\":{:.2},\"weight_mb_per_token\":{:.1},\"tg_bw_fraction\":{:.3}}}",
            bw / 1e9,
            wb / 1e6,
            wb * tg_best / bw
        );
    });
}
