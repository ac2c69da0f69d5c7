//! `kiln export gguf`: a kiln checkpoint (base or SFT) with its tokenizer and chat template as one
//! GGUF file that llama.cpp, LM Studio and ollama run. Parsing and printing only; the export is
//! `kiln_chat::gguf_export`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use kiln_engine::gguf::export::ExportType;

#[derive(Subcommand)]
pub enum ExportCommand {
    /// A checkpoint as GGUF (llama.cpp architecture `gpt2`; kiln's `modern` has no llama.cpp
    /// equivalent and is refused with the reasons).
    Gguf(GgufArgs),
}

/// Weight type of the matrices; norms, biases and the position table stay f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WeightType {
    F32,
    F16,
    /// 8-bit blocks of 32 with an f16 scale (llama.cpp's Q8_0).
    #[value(name = "q8_0")]
    Q8_0,
}

#[derive(Args)]
pub struct GgufArgs {
    /// Checkpoint folder, or a run folder with ckpt/latest (`runs/speedrun/sft`).
    #[arg(long, alias = "ckpt")]
    pub model: PathBuf,
    /// Tokenizer (folder or pretrained name) [default: the one the run was trained with].
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Output file (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Weight type of the matrices.
    #[arg(long = "type", value_enum, default_value_t = WeightType::F32)]
    pub ty: WeightType,
}

pub fn run(c: ExportCommand) -> anyhow::Result<()> {
    match c {
        ExportCommand::Gguf(a) => {
            let ty = match a.ty {
                WeightType::F32 => ExportType::F32,
                WeightType::F16 => ExportType::F16,
                WeightType::Q8_0 => ExportType::Q8_0,
            };
            let r =
                kiln_chat::gguf_export::export_gguf(&a.model, a.tokenizer.as_deref(), &a.out, ty)
                    .with_context(|| format!("exporting {}", a.model.display()))?;
            for t in &r.tensors.fell_back_to_f16 {
                tracing::warn!("{t}: rows are not whole Q8_0 blocks of 32, written as F16");
            }
            println!(
                "{}: {} from {}, vocab {} (pre-tokenizer {}), chat template {}, tensors {}, {:.1} MB",
                a.out.display(),
                r.arch,
                r.checkpoint.display(),
                r.n_vocab,
                r.pre,
                if r.has_chat_template { "yes" } else { "no (the tokenizer has no chat tokens)" },
                r.type_counts(),
                r.bytes as f64 / 1e6
            );
            Ok(())
        }
    }
}
