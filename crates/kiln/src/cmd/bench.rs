//! `kiln bench train`: the training/decode benchmark with torch_ref.py's shapes and JSON fields
//! (the measurement itself is in kiln_train::bench); `kiln bench loop`: the speedrun's pretraining
//! loop against that bare step; `kiln bench decode`: RL rollout vs batch-1 decode throughput
//! (kiln_train::rl::bench).

use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use kiln_train::device::{Device, DeviceSpec};

use super::DeviceArgs;

/// The shapes `kiln bench train` measures (kiln_train::bench's presets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchPreset {
    CpuSmall,
    GpuGpt2_124m,
    Tiny,
}

impl BenchPreset {
    fn name(self) -> &'static str {
        match self {
            BenchPreset::CpuSmall => "cpu-small",
            BenchPreset::GpuGpt2_124m => "gpu-gpt2-124m",
            BenchPreset::Tiny => "tiny",
        }
    }
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Training step + decode benchmark; prints one JSON line (torch_ref.py's fields plus
    /// KV-cache decode, peak memory; on the cpu a matmul-probe peak and the fraction of it, on a
    /// GPU MFU against 989 TFLOP/s with the FLOP formula).
    Train {
        /// cpu-small (torch_ref.py `cpu`: vocab 4096, ctx 256, 4 layers, 4 heads, width 256,
        /// batch 8, fp32, 2 threads), gpu-gpt2-124m (torch_ref.py `gpu`: vocab 50304, ctx 1024,
        /// 12 layers, 12 heads, width 768, batch 16, bf16; device cuda) or tiny.
        #[arg(long, value_enum, default_value_t = BenchPreset::CpuSmall)]
        preset: BenchPreset,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// The speedrun's pretraining loop (data loader, clipping, schedule, metrics, held-out
    /// validation data) against `bench train`'s bare training step, on the speedrun's default
    /// shape on the cpu, in interleaved rounds; prints one JSON line with the median ratios.
    Loop {
        #[arg(long, default_value_t = 4)]
        rounds: usize,
        /// Timed steps per side and round (after 3 warm-up steps).
        #[arg(long, default_value_t = 30)]
        steps: usize,
        /// CPU threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// RL rollout decode (batched, ragged prompts forked to groups) against batch-1 decode, in
    /// interleaved rounds, beside the same model's training tokens/s; prints one JSON line.
    Decode {
        /// Checkpoint (run folder or checkpoint) [default: a random model of the speedrun's
        /// default shape].
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// Rows decoded together (prompts × group).
        #[arg(long, default_value_t = 32)]
        rows: usize,
        /// Samples per prompt (one prefill, forked).
        #[arg(long, default_value_t = 8)]
        group: usize,
        /// Tokens generated per row.
        #[arg(long, default_value_t = 48)]
        tokens: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// CPU threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[command(flatten)]
        device: DeviceArgs,
    },
}

pub fn run(c: BenchCommand) -> anyhow::Result<()> {
    match c {
        BenchCommand::Train { preset, device } => {
            let Some(p) = kiln_train::bench::preset(preset.name()) else {
                bail!("unknown preset {preset:?} ({})", kiln_train::bench::PRESETS)
            };
            // the preset's thread count governs both rayon and gemm
            if p.threads > 0 {
                let _ = rayon::ThreadPoolBuilder::new()
                    .num_threads(p.threads)
                    .build_global();
            }
            let spec: DeviceSpec = device.spec(p.device)?;
            let r = super::on_engine_pool(|| kiln_train::bench::bench_train(&spec, &p))?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        BenchCommand::Loop {
            rounds,
            steps,
            threads,
        } => {
            if rounds == 0 || steps == 0 {
                bail!("--rounds and --steps must be positive");
            }
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build_global();
            let o = kiln_train::bench::LoopBench {
                rounds,
                steps,
                warm: 3,
                threads,
            };
            let r = super::on_engine_pool(|| kiln_train::bench::bench_loop(&o))?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        BenchCommand::Decode {
            model,
            rows,
            group,
            tokens,
            rounds,
            threads,
            device,
        } => {
            let spec: DeviceSpec = device.spec(Device::Cpu)?;
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build_global();
            let o = kiln_train::rl::bench::DecodeBench {
                rows,
                group,
                tokens,
                rounds,
                threads,
            };
            let r = super::on_engine_pool(|| {
                kiln_train::rl::bench::bench_decode(&spec, model.as_deref(), &o)
            })?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}
