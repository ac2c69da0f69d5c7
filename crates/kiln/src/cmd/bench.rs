//! `kiln bench train`: the training/decode benchmark with torch_ref.py's shapes and JSON fields
//! (the measurement itself is in kiln_train::bench).

use anyhow::bail;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Training step + decode benchmark; prints one JSON line (torch_ref.py's fields plus
    /// KV-cache decode, matmul-probe peak, fraction of peak, peak RSS).
    Train {
        /// cpu-small (torch_ref.py `cpu`: vocab 4096, ctx 256, 4 layers, 4 heads, width 256,
        /// batch 8, fp32, 2 threads) or tiny.
        #[arg(long, default_value = "cpu-small")]
        preset: String,
    },
}

pub fn run(c: BenchCommand) -> anyhow::Result<()> {
    match c {
        BenchCommand::Train { preset } => {
            let Some(p) = kiln_train::bench::preset(&preset) else {
                bail!("unknown preset {preset:?} (cpu-small, tiny)")
            };
            // the preset's thread count governs both rayon and gemm
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(p.threads)
                .build_global();
            let r = kiln_train::bench::bench_train(&p)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}
