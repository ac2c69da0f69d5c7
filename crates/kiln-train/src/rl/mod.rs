//! Reinforcement learning on verifiable tasks (GRPO family): the loss as per-token engine weights
//! ([`loss`]), the rollout/update loop ([`run`]), and [`run_job`], which turns a task name, a
//! model and its recorded tokenizer into prompts and verifiers for the loop; [`bench`] measures
//! rollout throughput (`kiln bench decode`).

pub mod bench;
pub mod loss;
pub mod run;

use std::path::PathBuf;
use std::sync::Arc;

use kiln_chat::format::{render_for_completion, Codec, Conversation, Message};
use kiln_chat::tasks::TaskKind;
use kiln_chat::tools::lessons::{FactWorld, DEFAULT_PLACES, DEFAULT_WORLD_SEED, TOOLS_SYSTEM};
use kiln_chat::tools::runtime::{ToolTokens, TurnLimits};
use kiln_chat::tools::search::SearchIndex;
use kiln_chat::tools::toolbox::ToolBox;
use kiln_engine::{load_checkpoint, resolve_checkpoint};

use crate::device::DeviceSpec;
use crate::error::TrainError;
pub use run::{
    rl, rl_hooked, rl_on, rl_on_hooked, rl_with, rollouts, HookOut, NoHook, RlConfig, RlData,
    RlItem, RlSummary, RlTools, Rollouts, Scorer, StepHook,
};

/// An RL run as the CLI and the speedrun's RL stage describe it.
#[derive(Clone, Debug)]
pub struct RlJob {
    /// The starting checkpoint (an SFT run folder or checkpoint).
    pub model: PathBuf,
    pub task: TaskKind,
    pub out: PathBuf,
    /// Tokenizer folder or name; `None`: the one the model's run recorded.
    pub tokenizer: Option<String>,
    pub resume: bool,
    pub progress: bool,
    pub train: RlConfig,
    /// Tools offered in the prompts and run inside rollouts and evals.
    pub tools: RlToolSet,
}

/// Which tools an RL run offers: the prompts gain the system line the tool lessons of SFT use
/// ([`TOOLS_SYSTEM`]) and calls run in the sandbox or against the index ([`RlTools`]).
#[derive(Clone, Debug, Default)]
pub struct RlToolSet {
    pub code: bool,
    pub search: bool,
    /// Search index folder (`kiln index build`); `None`: the generated world of places the
    /// `tool_search` SFT lessons teach on.
    pub index: Option<PathBuf>,
}

impl RlToolSet {
    pub fn any(&self) -> bool {
        self.code || self.search
    }

    /// The tool box these name (the sandbox's interpreter comes from the data folder).
    fn toolbox(&self) -> Result<ToolBox, TrainError> {
        let code = if self.code {
            let wasm = kiln_data::fetch::source_dir(kiln_sandbox::SOURCE_NAME)
                .map_err(|e| TrainError::Config(format!("the code tool: {e}")))?
                .join(kiln_sandbox::WASM_IN_SOURCE);
            let sandbox = kiln_sandbox::Sandbox::load(&wasm)
                .map_err(|e| TrainError::Config(format!("the code tool: {e}")))?;
            Some((sandbox, kiln_sandbox::Limits::default()))
        } else {
            None
        };
        let search = if self.search {
            Some(match &self.index {
                Some(dir) => SearchIndex::load(dir)
                    .map_err(|e| TrainError::Config(format!("the search tool: {e}")))?,
                None => FactWorld::new(DEFAULT_PLACES, DEFAULT_WORLD_SEED).index([]),
            })
        } else {
            None
        };
        Ok(ToolBox { code, search })
    }
}

/// Render `task`'s problems as prompts with verifiers for the tokenizer `tok`.
#[allow(clippy::too_many_arguments)]
pub fn task_data(
    task: TaskKind,
    tok: Arc<kiln_tokenizer::Tokenizer>,
    train: usize,
    held_out: usize,
    seed: u64,
    format_reward: f32,
    what: &str,
    tools: &RlToolSet,
) -> Result<RlData, TrainError> {
    let tokens = kiln_chat::load::chat_tokens(&tok, what)?;
    let rl_tools = if tools.any() {
        let tool_tokens = ToolTokens::from_chat(&tokens).ok_or_else(|| {
            TrainError::Config(format!(
                "--tools: {what} has no tool tokens (<|output_start|>, <|output_end|>)"
            ))
        })?;
        let codec: Arc<dyn Codec + Send + Sync> = tok.clone();
        Some(RlTools {
            tokens: tool_tokens,
            codec,
            run: {
                let toolbox = tools.toolbox()?;
                Box::new(move |tool, input| toolbox.answer(tool, input))
            },
            limits: TurnLimits::default(),
        })
    } else {
        None
    };
    let items = |held: bool, n: usize| -> Result<Vec<RlItem>, TrainError> {
        // Held-out problems come from a fixed seed so every run evaluates the same set.
        let seed = if held { 0x4E1D } else { seed };
        task.problems(n, seed, held)
            .into_iter()
            .map(|p| {
                let mut conv = Conversation::new(vec![Message::user(p.question.clone())]);
                if rl_tools.is_some() {
                    conv.system = Some(TOOLS_SYSTEM.into());
                }
                let prompt = render_for_completion(&conv, tok.as_ref(), &tokens)
                    .map_err(|e| TrainError::Data(e.to_string()))?;
                let tok = tok.clone();
                let score: Scorer =
                    Arc::new(move |ids: &[u32]| p.score_with(&tok.decode_text(ids), format_reward));
                Ok(RlItem { prompt, score })
            })
            .collect()
    };
    Ok(RlData {
        train: items(false, train)?,
        held_out: items(true, held_out)?,
        stop: tokens.stop_ids(),
        tools: rl_tools,
    })
}

/// Load the model's tokenizer, render the task and run [`rl_on`].
pub fn run_job(job: &RlJob, spec: &DeviceSpec) -> Result<RlSummary, TrainError> {
    let dir = resolve_checkpoint(&job.model)?;
    let tok_name = match &job.tokenizer {
        Some(t) => t.clone(),
        None => load_checkpoint(&dir)?.train["config"]["tokenizer"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                TrainError::Config(format!(
                    "{}: the run recorded no tokenizer; pass --tokenizer",
                    dir.display()
                ))
            })?,
    };
    let tok = Arc::new(kiln_tokenizer::Tokenizer::load_named(&tok_name)?);
    // One problem per prompt slot, capped: problems cycle after that.
    let n_train = (job.train.steps * job.train.prompts_per_step).clamp(1, 20_000);
    let data = task_data(
        job.task,
        tok,
        n_train,
        job.train.eval_problems,
        job.train.seed,
        job.train.format_reward,
        &format!("RL model {} (tokenizer {tok_name})", job.model.display()),
        &job.tools,
    )?;
    std::fs::create_dir_all(&job.out).map_err(|e| TrainError::io(&job.out, e))?;
    let tok_abs = match std::fs::canonicalize(&tok_name) {
        Ok(p) => p.display().to_string(),
        Err(_) => tok_name.clone(),
    };
    let tools = [("code", job.tools.code), ("search", job.tools.search)];
    let cfg = RlConfig {
        task: job.task.name().into(),
        tokenizer: Some(tok_abs),
        tools: tools.iter().filter(|t| t.1).map(|t| t.0.into()).collect(),
        ..job.train.clone()
    };
    rl_on(
        spec,
        &cfg,
        &job.model,
        &data,
        &job.out,
        job.resume,
        job.progress,
    )
}
