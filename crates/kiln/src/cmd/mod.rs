//! One module per subcommand family, plus the flag groups several subcommands share (one name and
//! one default per concept: `--device`, `--precision`, `--temperature`/`--top-k`/`--top-p`/`--min-p`).

use std::borrow::Cow;

use clap::{Args, ValueEnum};
use kiln_engine::SamplingParams;
use kiln_train::device::{Device, DeviceSpec};

pub mod bench;
pub mod chat;
pub mod data;
pub mod export;
pub mod gguf;
pub mod models;
pub mod perplexity;
pub mod pretrain;
pub mod rl;
pub mod rlhf;
pub mod sample;
pub mod serve;
pub mod sft;
pub mod speedrun;
pub mod tok;
pub mod tool;

/// Size rayon's global pool for the engine (all cores unless told) and return the thread count.
pub fn engine_threads(n: Option<usize>) -> usize {
    if let Some(n) = n {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    rayon::current_num_threads()
}

/// Runs an engine command on a worker of rayon's global pool instead of the main thread. The
/// engine issues hundreds of parallel ops per training step (and per decoded token); forked from
/// inside the pool they are split and stolen locally, while from the main thread each one is
/// injected into the pool, wakes sleeping workers and parks the main thread — and the main thread
/// is a third runnable thread on a machine whose pool already has one per core. (On the shared
/// 2-core machine the gain was within run-to-run noise; the change removes work, not adds it.)
pub fn on_engine_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// The compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    Cpu,
    /// An NVIDIA GPU (a build with `--features cuda`).
    Cuda,
}

/// Matmul arithmetic on cuda.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionChoice {
    /// Tensor cores, fp32 accumulation.
    Bf16,
    Tf32,
    /// Exact.
    F32,
}

/// `--device` / `--precision`, shared by pretrain, sft, sample and bench train.
#[derive(Args, Clone, Debug, Default)]
pub struct DeviceArgs {
    /// Backend [default: cpu; cuda for the gpu-* bench presets]. Checkpoints load on either.
    #[arg(long, value_enum)]
    pub device: Option<DeviceChoice>,
    /// Matmul arithmetic on cuda [default: bf16]. The cpu backend computes in f32.
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionChoice>,
}

impl DeviceArgs {
    /// The device to use, `default` when `--device` is not given.
    pub fn spec(&self, default: Device) -> anyhow::Result<DeviceSpec> {
        let device = self.named(default);
        let precision = self
            .precision
            .map(|p| match p {
                PrecisionChoice::Bf16 => "bf16",
                PrecisionChoice::Tf32 => "tf32",
                PrecisionChoice::F32 => "f32",
            })
            .map(str::parse)
            .transpose()?;
        let s = DeviceSpec { device, precision };
        s.check_built()?;
        Ok(s)
    }

    /// The device named, `default` when none, whether or not this build can run on it.
    pub fn named(&self, default: Device) -> Device {
        match self.device {
            Some(DeviceChoice::Cpu) => Device::Cpu,
            Some(DeviceChoice::Cuda) => Device::Cuda,
            None => default,
        }
    }
}

/// How tokens are drawn, the same flags and defaults in `kiln sample` and `kiln chat`.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Sampling temperature (0 = greedy).
    #[arg(long, alias = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Keep the most likely tokens up to this total probability (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
        }
    }
}

/// Text for a terminal: control characters other than newline and tab become visible escapes
/// (`\x1b`), so what a program printed or a model wrote cannot clear the screen, move the cursor,
/// retitle the window or set the clipboard (OSC 52), and `\r` cannot hide a line behind another.
/// Output into a pipe or a file stays byte for byte what the model saw.
pub fn for_terminal(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_text_shows_control_characters_as_escapes() {
        assert_eq!(for_terminal("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(
            for_terminal("\x1b[2J\x1b]52;c;aGk=\x07safe\rDANGER\u{9b}"),
            "\\x1b[2J\\x1b]52;c;aGk=\\x07safe\\x0dDANGER\\x9b"
        );
        assert!(matches!(for_terminal("héllo"), Cow::Borrowed(_)));
    }
}
