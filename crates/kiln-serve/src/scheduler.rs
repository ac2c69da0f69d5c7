//! Continuous batching: one thread owns the model and a [`BatchDecoder`] of N slots and loops
//!
//! 1. **admit**: while a slot is free (and up to [`PREFILL_BUDGET`] prompt tokens a round), take
//!    the next request from the bounded queue, prefill its prompt into a free slot (and `fork` it
//!    into `n - 1` more for `n > 1`). A free slot keeps the cache of its last sequence, and the
//!    request takes the free slot whose tokens share the longest prefix with its prompt: only
//!    the rest is computed (the chat template's system prompt; a conversation's earlier turns,
//!    resent whole with every message);
//! 2. **sample**: for every running sequence, sample its next token from its own logits with its
//!    own seeded [`Rng`], decode it to text, match stop strings, stream the piece out;
//! 3. **step**: one decode step for all sequences still running, each at its own position;
//!
//! so requests join and leave the batch between steps, and a finished, cancelled (the client's
//! receiver is gone) or timed-out request frees its slots at once. The thread never blocks on a
//! client: events go out on unbounded channels, and a slow reader only costs memory for the text
//! it has not read yet (bounded by `max_tokens`).
//!
//! **Tools** (a kiln checkpoint served with `--tools`): when a chat reply's sampled token closes
//! a tool call, that sequence leaves the batch and the call runs on a thread of its own (a
//! sandboxed program may take seconds; the other sequences keep stepping). Its output comes back
//! on a channel; the closing token and `<|output_start|> output <|output_end|>` are prefilled
//! into the sequence's slot on top of the cache it holds (`prefill_reusing`, as RL rollouts do),
//! and the sequence rejoins the batch. Limits are kiln-chat's per-turn ones: calls, output
//! length (cut and marked) and the reply's time for tools; a call past them gets an error line
//! the model reads, as does a call the model never closes.
//!
//! The queue is a `sync_channel`: its capacity is the number of requests that may wait for a
//! slot, and a full queue is the HTTP side's 503. The scheduler only takes a request out of it
//! when it has a slot for it, so "waiting" means "in the channel" (the one exception: a request
//! with `n > 1` that needs more slots than are free waits at the head, ahead of the others, so
//! it cannot starve).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_chat::tools::runtime::{call_output, CallStep, CallTracker, Tool, UNCLOSED_CALL};
use kiln_engine::{sample_token, BatchDecoder, EngineError, Rng, SamplingParams};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::ApiError;
use crate::metrics::{Metrics, Outcome};
use crate::model::ServedModel;

/// Prompt tokens prefilled between two decode steps (at least one request is admitted). A burst
/// of new requests then delays the running streams by a bounded amount instead of by all their
/// prompts, and the first requests of a burst get their first token before the last are
/// prefilled.
const PREFILL_BUDGET: usize = 256;

/// Builds the decoder the scheduler drives (normally [`crate::model::make_decoder`]; tests wrap
/// it to slow steps down or count them).
pub type DecoderFactory =
    for<'m> fn(&'m ServedModel, usize, usize) -> Result<Box<dyn BatchDecoder + 'm>, EngineError>;

/// One request, ready to run: prompt ids and everything sampling needs.
pub struct Job {
    pub prompt: Vec<u32>,
    /// Most tokens per choice (the slot's capacity also ends a reply).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Token ids that end a reply (not returned).
    pub stop_ids: Vec<u32>,
    /// Strings that end a reply (not returned), matched on the decoded text.
    pub stop: Vec<String>,
    /// Choice `i` samples with `Rng::new(seed + i)`.
    pub seed: u64,
    pub n: usize,
    /// `Some(k)`: log-probabilities with the `k` most likely alternatives.
    pub logprobs: Option<usize>,
    /// Presence and frequency penalties and logit bias (all off by default).
    pub penalties: Penalties,
    /// The reply may call the served model's tools (a chat request to a server with tools).
    pub tools: bool,
    pub events: UnboundedSender<Event>,
    /// When the HTTP side accepted it (time to first token counts from here).
    pub accepted: Instant,
    pub deadline: Instant,
}

/// OpenAI's `presence_penalty`, `frequency_penalty` and `logit_bias`, applied to a choice's
/// logits before each draw: `logit[j] += bias[j] - frequency·c[j] - presence·[c[j] > 0]`, where
/// `c[j]` counts token `j` in the reply so far (not the prompt). The draw, and the logprobs
/// reported with it, come from the adjusted logits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Penalties {
    pub presence: f32,
    pub frequency: f32,
    /// `(token id, bias)`; ids are checked against the vocabulary when the request is parsed.
    pub bias: Vec<(u32, f32)>,
}

impl Penalties {
    pub fn is_off(&self) -> bool {
        self.presence == 0.0 && self.frequency == 0.0 && self.bias.is_empty()
    }

    /// Adjust `logits` for a reply whose tokens so far are counted in `counts`.
    pub fn apply(&self, logits: &mut [f32], counts: &HashMap<u32, u32>) {
        for &(id, b) in &self.bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += b;
            }
        }
        if self.presence != 0.0 || self.frequency != 0.0 {
            for (&id, &c) in counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= self.frequency * c as f32 + self.presence;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or a stop string.
    Stop,
    /// `max_tokens` or the end of the slot's context.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Log-probability of one generated token and its most likely alternatives.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub bytes: Vec<u8>,
    /// A control token: `bytes` name it, but it adds nothing to the reply's text.
    pub control: bool,
    pub logprob: f32,
    pub top: Vec<(Vec<u8>, f32)>,
}

/// What the scheduler tells a request's HTTP handler.
#[derive(Debug)]
pub enum Event {
    /// Choice `index` produced text (empty when a stop string may be starting: held back) and,
    /// if asked, the log-probabilities of the tokens behind it.
    Delta {
        index: usize,
        text: String,
        logprobs: Option<TokenLogprob>,
    },
    Finish {
        index: usize,
        reason: FinishReason,
    },
    /// Choice `index` opened its tool call number `call` (`input` empty) or wrote more of it.
    ToolInput {
        index: usize,
        call: usize,
        tool: &'static str,
        input: String,
    },
    /// Tool call `call` of choice `index` returned `output`, which the model reads next.
    ToolOutput {
        index: usize,
        call: usize,
        output: String,
    },
    /// Every choice has finished; the last event.
    Done {
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The request failed (timeout, engine error); the last event.
    Failed(ApiError),
}

/// The HTTP side's end of the queue.
#[derive(Clone)]
pub struct Queue {
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
    slots: usize,
    capacity: usize,
}

impl Queue {
    /// Queues `job`, or says why not (503 when full).
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        // Counted before sending so the scheduler's decrement can never come first.
        self.metrics.queue_depth.fetch_add(1, Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Relaxed);
                Err(match e {
                    TrySendError::Full(_) => ApiError::queue_full(),
                    TrySendError::Disconnected(_) => {
                        ApiError::internal("the scheduler has stopped")
                    }
                })
            }
        }
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Tokens per slot.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Starts the scheduler thread over `model` with `slots` slots of `capacity` tokens and a queue
/// of `queue` waiting requests. Fails when the decoder cannot be built (the error comes back
/// here, not in a log line from a dead thread).
pub fn spawn(
    model: Arc<ServedModel>,
    make: DecoderFactory,
    slots: usize,
    capacity: usize,
    queue: usize,
    metrics: Arc<Metrics>,
) -> Result<(Queue, std::thread::JoinHandle<()>), EngineError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(queue.max(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let m = metrics.clone();
    let thread = std::thread::Builder::new()
        .name("kiln-scheduler".into())
        .spawn(move || {
            let mut dec = match make(&model, slots, capacity) {
                Ok(d) => {
                    let _ = ready_tx.send(Ok(d.capacity()));
                    d
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            m.slots.store(dec.slots() as u64, Relaxed);
            let (tool_tx, tool_rx) = std::sync::mpsc::channel();
            Scheduler {
                model: &model,
                shared: model.clone(),
                tool_tx,
                tool_rx,
                next_serial: 0,
                dec: dec.as_mut(),
                metrics: &m,
                free: (0..slots).rev().collect(),
                active: Vec::new(),
                held: vec![Vec::new(); slots],
            }
            .run(rx);
        })
        .map_err(|e| EngineError::Config(format!("starting the scheduler thread: {e}")))?;
    let capacity = ready_rx
        .recv()
        .map_err(|_| EngineError::Config("the scheduler thread died while starting".into()))??;
    Ok((
        Queue {
            tx,
            metrics,
            slots,
            capacity,
        },
        thread,
    ))
}

/// Bytes of generated tokens → text, holding back what might be the start of a stop string.
#[derive(Default)]
struct TextOut {
    /// Bytes of an incomplete UTF-8 character.
    pending: Vec<u8>,
    /// Decoded text not yet sent: a suffix that is a prefix of some stop string.
    held: String,
}

impl TextOut {
    /// Adds a token's bytes; returns the text that can be sent now and whether a stop string
    /// was found (the text before it is returned, the rest dropped).
    fn push(&mut self, bytes: &[u8], stops: &[String]) -> (String, bool) {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(), // incomplete: wait for more
            Err(_) => self.pending.len(),                         // invalid for good: lossy
        };
        let piece = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
        self.pending.drain(..valid);
        self.held.push_str(&piece);
        if stops.is_empty() {
            return (std::mem::take(&mut self.held), false);
        }
        // Text already sent never ends with a prefix of a stop string, so a match must start
        // inside `held`.
        if let Some(at) = stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        let keep = stops
            .iter()
            .map(|s| partial_suffix(&self.held, s))
            .max()
            .unwrap_or(0);
        let out = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        (out, false)
    }

    /// Everything left (the reply ended without a stop string).
    fn flush(&mut self) -> String {
        let mut s = std::mem::take(&mut self.held);
        s.push_str(&String::from_utf8_lossy(&self.pending));
        self.pending.clear();
        s
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn partial_suffix(text: &str, stop: &str) -> usize {
    let max = (stop.len() - 1).min(text.len());
    (1..=max)
        .rev()
        .find(|&k| {
            text.is_char_boundary(text.len() - k) && stop.starts_with(&text[text.len() - k..])
        })
        .unwrap_or(0)
}

/// Log-softmax of `logits` at `token`, and the `k` most likely tokens.
fn logprob(model: &ServedModel, logits: &[f32], token: u32, k: usize) -> TokenLogprob {
    let mx = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = mx + logits.iter().map(|&x| (x - mx).exp()).sum::<f32>().ln();
    let mut top = Vec::new();
    if k > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = k.min(idx.len());
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        idx.select_nth_unstable_by(k - 1, by_logit);
        idx.truncate(k);
        idx.sort_by(by_logit);
        top = idx
            .into_iter()
            .map(|i| (model.token_bytes(i), logits[i as usize] - lse))
            .collect();
    }
    TokenLogprob {
        bytes: model.token_bytes(token),
        control: model.is_control(token),
        logprob: logits[token as usize] - lse,
        top,
    }
}

/// One sampled continuation of a request (one choice) in one slot.
struct Seq {
    index: usize,
    slot: usize,
    rng: Rng,
    /// Logits for the next token.
    logits: Vec<f32>,
    generated: usize,
    /// How often each token occurs in the reply so far (kept only when penalties are on).
    counts: HashMap<u32, u32>,
    text: TextOut,
    done: bool,
    /// With tools: the reply's ids, sampled and forced (a call's text is read from them).
    reply: Vec<u32>,
    /// Where the reply stands with tool calls.
    call: CallTracker,
    /// Calls closed so far (the next call's number).
    calls: usize,
    /// The text of the call being written, decoded as it streams.
    input: TextOut,
    /// A tool is running for this sequence: it sits out the steps until its output is fed.
    waiting: bool,
}

impl Seq {
    fn new(index: usize, slot: usize, seed: u64, logits: Vec<f32>) -> Seq {
        Seq {
            index,
            slot,
            rng: Rng::new(seed),
            logits,
            generated: 0,
            counts: HashMap::new(),
            text: TextOut::default(),
            done: false,
            reply: Vec::new(),
            call: CallTracker::default(),
            calls: 0,
            input: TextOut::default(),
            waiting: false,
        }
    }
}

/// A tool call's result, sent back by the thread that ran it.
struct ToolDone {
    /// [`Running::serial`] of the request (it may have ended meanwhile).
    serial: u64,
    seq: usize,
    call: usize,
    output: String,
    /// What the model reads: the output's forced ids.
    forced: Vec<u32>,
}

/// A tool call to start once the step's sampling is over.
struct CallToRun {
    serial: u64,
    seq: usize,
    call: usize,
    tool: Tool,
    input: String,
    /// When the request was admitted (the reply's time for tools counts from here).
    since: Instant,
}

fn tool_name(tool: Tool) -> &'static str {
    match tool {
        Tool::Code => "code",
        Tool::Search => "search",
    }
}

/// What the client reads for a call closed by the reply's last allowed token.
const NOT_RUN: &str = "error: the reply reached its length limit before the tool ran\n";

struct Running {
    /// Tells this request's tool results from a later request's in the same slot.
    serial: u64,
    admitted: Instant,
    job: Job,
    seqs: Vec<Seq>,
    completion_tokens: usize,
    first_token: bool,
    /// Set when the request leaves early (cancelled, timed out, failed), with what to tell it.
    ended: Option<(Outcome, Option<ApiError>)>,
}

struct Scheduler<'a, 'm> {
    model: &'a ServedModel,
    /// The same model, for the threads that run tool calls.
    shared: Arc<ServedModel>,
    tool_tx: Sender<ToolDone>,
    tool_rx: Receiver<ToolDone>,
    next_serial: u64,
    dec: &'a mut (dyn BatchDecoder + 'm),
    metrics: &'a Metrics,
    free: Vec<usize>,
    active: Vec<Running>,
    /// The tokens in each slot's cache (prompt and every token stepped in), kept after the slot
    /// is freed so that the next prompt with the same beginning reuses them.
    held: Vec<Vec<u32>>,
}

impl Scheduler<'_, '_> {
    fn run(mut self, rx: Receiver<Job>) {
        let mut head: Option<Job> = None;
        let mut open = true;
        loop {
            // Tool outputs that came back: feed them, and the sequences rejoin the batch. When
            // every running sequence waits for a tool, wait here a little (new requests are
            // looked for in between) instead of spinning.
            let mut results: Vec<ToolDone> = self.tool_rx.try_iter().collect();
            if results.is_empty() && !self.active.is_empty() && !self.any_runnable() {
                results.extend(self.tool_rx.recv_timeout(Duration::from_millis(5)));
            }
            for d in results {
                rayon::scope(|_| self.guarded(|s| s.tool_done(d)));
            }
            // Admit while there are free slots and this round's prefill budget lasts.
            let mut budget = PREFILL_BUDGET;
            while !self.free.is_empty() && budget > 0 {
                let job = if let Some(j) = head.take() {
                    j
                } else if self.active.is_empty() {
                    // Idle: sleep until a request comes (or every sender is gone).
                    match rx.recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(j) => j,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                };
                if job.n > self.free.len() && !job.events.is_closed() {
                    head = Some(job);
                    break;
                }
                budget = budget.saturating_sub(job.prompt.len() - self.best_free(&job.prompt).1);
                // On a pool worker, as the step below.
                rayon::scope(|_| self.guarded(|s| s.admit(job)));
            }
            if self.active.is_empty() {
                if !open && head.is_none() {
                    return;
                }
                continue;
            }
            // The step runs on a worker of rayon's global pool (the engine's), so its parallel
            // products fork from inside the pool. From this outside thread each of the ~100
            // fork-joins per token paid a cross-thread wake-up: perf at 1 client put a third of
            // the server's time in futex waits and wake-ups. Now it is one per step.
            rayon::scope(|_| self.guarded(Self::step));
        }
    }

    /// Runs `f`; if the engine panics inside it (a bug, but not one a request may use to take the
    /// server down), every running request fails with a 500 and the slots are cleared.
    fn guarded(&mut self, f: impl FnOnce(&mut Self)) {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self))).is_ok() {
            return;
        }
        tracing::error!("the decoder panicked; failing the running requests");
        for r in &mut self.active {
            if r.ended.is_none() {
                let e = ApiError::internal("the decoder failed on this batch");
                r.ended = Some((Outcome::Failed, Some(e)));
            }
        }
        self.retire();
        // The panic may have left slots half-assigned: start over from all free.
        let n = self.dec.slots();
        for s in 0..n {
            self.dec.clear(s);
        }
        self.free = (0..n).rev().collect();
        self.held.iter_mut().for_each(Vec::clear);
        self.metrics.busy_slots.store(0, Relaxed);
    }

    /// Frees `slot`; its cache stays, for a next prompt that begins the same way.
    fn release(&mut self, slot: usize) {
        self.free.push(slot);
        self.metrics.busy_slots.fetch_sub(1, Relaxed);
    }

    /// Frees `slot` whose cache no longer matches `held` (a failed prefill or step).
    fn release_cleared(&mut self, slot: usize) {
        self.dec.clear(slot);
        self.held[slot].clear();
        self.release(slot);
    }

    /// The index in `free` of the slot whose held tokens share the longest prefix with `prompt`,
    /// and how many of them can be kept (at least the prompt's last token is always run: its
    /// logits start the reply).
    fn best_free(&self, prompt: &[u32]) -> (usize, usize) {
        let mut best = (self.free.len().saturating_sub(1), 0);
        for (i, &slot) in self.free.iter().enumerate() {
            let held = &self.held[slot];
            let common = held.iter().zip(prompt).take_while(|(a, b)| a == b).count();
            let keep = common.min(prompt.len().saturating_sub(1));
            if keep > best.1 {
                best = (i, keep);
            }
        }
        best
    }

    fn admit(&mut self, job: Job) {
        self.metrics.queue_depth.fetch_sub(1, Relaxed);
        if job.events.is_closed() {
            self.metrics.count(Outcome::Cancelled);
            return;
        }
        if Instant::now() > job.deadline {
            let secs = (job.deadline - job.accepted).as_secs_f64();
            self.metrics.count(Outcome::Timeout);
            let _ = job.events.send(Event::Failed(ApiError::timeout(secs)));
            return;
        }
        let fail = |job: &Job, e: EngineError| {
            let _ = job
                .events
                .send(Event::Failed(ApiError::internal(format!("engine: {e}"))));
        };
        if job.n == 0 || job.n > self.free.len() {
            fail(
                &job,
                EngineError::Config(format!("n = {} needs more slots than exist", job.n)),
            );
            self.metrics.count(Outcome::Failed);
            return;
        }
        let (first, keep) = self.best_free(&job.prompt);
        let mut slots = vec![self.free.swap_remove(first)];
        for _ in 1..job.n {
            slots.push(self.free.pop().unwrap_or_default());
        }
        self.metrics.busy_slots.fetch_add(job.n as u64, Relaxed);
        let run = if keep > 0 {
            self.dec.prefill_reusing(slots[0], keep, &job.prompt)
        } else {
            self.dec.prefill(slots[0], &job.prompt)
        };
        let prefilled = run.and_then(|logits| {
            for &s in &slots[1..] {
                self.dec.fork(slots[0], s)?;
            }
            Ok(logits)
        });
        let logits = match prefilled {
            Ok(l) => l,
            Err(e) => {
                fail(&job, e);
                for s in slots {
                    self.release_cleared(s);
                }
                self.metrics.count(Outcome::Failed);
                return;
            }
        };
        for &s in &slots {
            self.held[s].clone_from(&job.prompt);
        }
        self.metrics
            .prompt_tokens
            .fetch_add(job.prompt.len() as u64, Relaxed);
        self.metrics
            .cached_prompt_tokens
            .fetch_add(keep as u64, Relaxed);
        let seqs = slots
            .into_iter()
            .enumerate()
            .map(|(index, slot)| {
                Seq::new(
                    index,
                    slot,
                    job.seed.wrapping_add(index as u64),
                    logits.clone(),
                )
            })
            .collect();
        self.next_serial += 1;
        self.active.push(Running {
            serial: self.next_serial,
            admitted: Instant::now(),
            job,
            seqs,
            completion_tokens: 0,
            first_token: false,
            ended: None,
        });
    }

    /// Sample one token for every running sequence, then one decode step for those that go on.
    fn step(&mut self) {
        let now = Instant::now();
        let capacity = self.dec.capacity();
        let mut batch_slots = Vec::new();
        let mut batch_tokens = Vec::new();
        // (request, sequence) of each batch row.
        let mut owners = Vec::new();
        let mut freed = Vec::new();
        let mut calls = Vec::new();
        let mut generated = 0u64;
        for (ri, r) in self.active.iter_mut().enumerate() {
            if r.job.events.is_closed() {
                r.ended = Some((Outcome::Cancelled, None));
                continue;
            }
            if now > r.job.deadline {
                let secs = (r.job.deadline - r.job.accepted).as_secs_f64();
                r.ended = Some((Outcome::Timeout, Some(ApiError::timeout(secs))));
                continue;
            }
            let tools = self.model.tools().filter(|_| r.job.tools);
            for (si, s) in r.seqs.iter_mut().enumerate() {
                if s.done || s.waiting {
                    continue;
                }
                if !r.job.penalties.is_off() {
                    r.job.penalties.apply(&mut s.logits, &s.counts);
                }
                let tok = sample_token(&s.logits, &r.job.sampling, &mut s.rng);
                let send = |ev: Event| {
                    let _ = r.job.events.send(ev);
                };
                let mut finish = None;
                // The call this token closes: it runs before the sequence goes on.
                let mut closes = None;
                if r.job.stop_ids.contains(&tok) {
                    finish = Some(FinishReason::Stop);
                    let rest = s.text.flush();
                    if !rest.is_empty() {
                        send(Event::Delta {
                            index: s.index,
                            text: rest,
                            logprobs: None,
                        });
                    }
                } else {
                    if !r.first_token {
                        r.first_token = true;
                        self.metrics
                            .observe_ttft(r.job.accepted.elapsed().as_secs_f64());
                    }
                    s.generated += 1;
                    if !r.job.penalties.is_off() {
                        *s.counts.entry(tok).or_default() += 1;
                    }
                    r.completion_tokens += 1;
                    generated += 1;
                    let lp = r
                        .job
                        .logprobs
                        .map(|k| logprob(self.model, &s.logits, tok, k));
                    let mut text = String::new();
                    let mut in_call = false;
                    if let Some(t) = tools {
                        s.reply.push(tok);
                        let step = s.call.push(&t.tokens, &s.reply);
                        let opened = matches!(step, CallStep::Opened(_));
                        let (tool, piece) = match step {
                            CallStep::Text => (None, String::new()),
                            CallStep::Opened(tool) => {
                                // The text before the call goes out whole, ahead of the call:
                                // the call breaks any stop string it might have begun.
                                let before = s.text.flush();
                                if !before.is_empty() {
                                    send(Event::Delta {
                                        index: s.index,
                                        text: before,
                                        logprobs: None,
                                    });
                                }
                                (Some(tool), String::new())
                            }
                            CallStep::Inside(tool) => {
                                let bytes = self.model.text_bytes(tok);
                                (Some(tool), s.input.push(&bytes, &[]).0)
                            }
                            CallStep::Closed(tool, range) => {
                                let input = self.model.call_text(&s.reply[range]);
                                closes = Some((tool, input, s.calls));
                                (Some(tool), s.input.flush())
                            }
                        };
                        if let Some(tool) = tool {
                            in_call = true;
                            // A call's first event (its opening id) has an empty piece; later
                            // ones carry text.
                            if opened || !piece.is_empty() {
                                send(Event::ToolInput {
                                    index: s.index,
                                    call: s.calls,
                                    tool: tool_name(tool),
                                    input: piece,
                                });
                            }
                            if closes.is_some() {
                                s.calls += 1;
                            }
                        }
                    }
                    if !in_call {
                        let (t, hit) = s.text.push(&self.model.text_bytes(tok), &r.job.stop);
                        text = t;
                        if hit {
                            finish = Some(FinishReason::Stop);
                        }
                    }
                    if finish.is_none()
                        && (s.generated >= r.job.max_tokens || self.dec.len(s.slot) + 1 > capacity)
                    {
                        finish = Some(FinishReason::Length);
                        text.push_str(&s.text.flush());
                    }
                    if !text.is_empty() || lp.is_some() || !in_call {
                        send(Event::Delta {
                            index: s.index,
                            text,
                            logprobs: lp,
                        });
                    }
                }
                if finish.is_some() {
                    // A call the reply ends inside, or closes with its last token, never runs;
                    // the client still learns what became of it.
                    let unrun = if s.call.unclosed().is_some() {
                        s.calls += 1;
                        Some((s.calls - 1, UNCLOSED_CALL))
                    } else {
                        closes.take().map(|(_, _, call)| (call, NOT_RUN))
                    };
                    if let Some((call, output)) = unrun {
                        send(Event::ToolOutput {
                            index: s.index,
                            call,
                            output: output.into(),
                        });
                    }
                }
                match (finish, closes) {
                    (Some(reason), _) => {
                        s.done = true;
                        freed.push(s.slot);
                        send(Event::Finish {
                            index: s.index,
                            reason,
                        });
                    }
                    (None, Some((tool, input, call))) => {
                        s.waiting = true;
                        calls.push(CallToRun {
                            serial: r.serial,
                            seq: si,
                            call,
                            tool,
                            input,
                            since: r.admitted,
                        });
                    }
                    (None, None) => {
                        batch_slots.push(s.slot);
                        batch_tokens.push(tok);
                        owners.push((ri, si));
                    }
                }
            }
        }
        self.metrics.generated_tokens.fetch_add(generated, Relaxed);
        for s in freed {
            self.release(s);
        }
        for c in calls {
            self.start_call(c);
        }
        if !batch_slots.is_empty() {
            match self.dec.step(&batch_slots, &batch_tokens) {
                Ok(logits) => {
                    for (&slot, &tok) in batch_slots.iter().zip(&batch_tokens) {
                        self.held[slot].push(tok);
                    }
                    let v = self.dec.vocab();
                    for (row, &(ri, si)) in owners.iter().enumerate() {
                        self.active[ri].seqs[si]
                            .logits
                            .copy_from_slice(&logits[row * v..(row + 1) * v]);
                    }
                }
                Err(e) => {
                    tracing::error!("decode step failed: {e}");
                    // What the failed step wrote is unknown: nothing in these slots is reused.
                    for &slot in &batch_slots {
                        self.held[slot].clear();
                        self.dec.clear(slot);
                    }
                    for &(ri, _) in &owners {
                        let r = &mut self.active[ri];
                        if r.ended.is_none() {
                            let err = ApiError::internal(format!("engine: {e}"));
                            r.ended = Some((Outcome::Failed, Some(err)));
                        }
                    }
                }
            }
        }
        self.retire();
    }

    /// Whether some running sequence can be sampled (not every one waits for a tool), or a
    /// request has ended and is waiting to be retired.
    fn any_runnable(&self) -> bool {
        self.active
            .iter()
            .any(|r| r.ended.is_some() || r.seqs.iter().any(|s| !s.done && !s.waiting))
    }

    /// Starts a tool call on a thread of its own; its result comes back through `tool_rx`. A call
    /// over the reply's limits (calls, time) is answered at once with the error the model reads.
    fn start_call(&mut self, c: CallToRun) {
        let Some(tools) = self.model.tools() else {
            return; // a job only has tools when the model does
        };
        let limits = tools.limits;
        self.metrics.tool_calls.fetch_add(1, Relaxed);
        let done = |output: String, forced: Vec<u32>| ToolDone {
            serial: c.serial,
            seq: c.seq,
            call: c.call,
            output,
            forced,
        };
        let refusal = if c.call >= limits.max_calls {
            // call_output words the over-the-limit answer without running anything.
            Some(call_output(
                &mut &*tools.toolbox,
                c.tool,
                &c.input,
                c.call,
                &limits,
            ))
        } else if c.since.elapsed() >= limits.wall {
            Some(format!(
                "error: this reply's time for tools ({} s) is up\n",
                limits.wall.as_secs()
            ))
        } else {
            None
        };
        if let Some(output) = refusal {
            let forced = self.model.output_ids(&output);
            let _ = self.tool_tx.send(done(output, forced));
            return;
        }
        let model = self.shared.clone();
        let tx = self.tool_tx.clone();
        let (serial, seq, call, tool, input) = (c.serial, c.seq, c.call, c.tool, c.input);
        let spawned = std::thread::Builder::new()
            .name("kiln-tool".into())
            .spawn(move || {
                let Some(tools) = model.tools() else { return };
                // The sandbox turns a program's every failure into text; a panic here would be
                // kiln's bug, and it must not leave the sequence waiting for ever.
                let output = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    call_output(&mut &*tools.toolbox, tool, &input, call, &tools.limits)
                }))
                .unwrap_or_else(|_| "error: the tool failed\n".into());
                let forced = model.output_ids(&output);
                let _ = tx.send(ToolDone {
                    serial,
                    seq,
                    call,
                    output,
                    forced,
                });
            });
        if let Err(e) = spawned {
            let output = format!("error: the tool could not start ({e})\n");
            let forced = self.model.output_ids(&output);
            let _ = self.tool_tx.send(ToolDone {
                serial,
                seq,
                call,
                output,
                forced,
            });
        }
    }

    /// A tool's output for a waiting sequence: the closing id and the output join its slot's
    /// cache in one prefill on top of what the slot holds, and the sequence rejoins the batch. A
    /// result for a request that has ended meanwhile is dropped.
    fn tool_done(&mut self, d: ToolDone) {
        let Some(ri) = self.active.iter().position(|r| r.serial == d.serial) else {
            return;
        };
        let r = &mut self.active[ri];
        let Some(s) = r.seqs.get_mut(d.seq).filter(|s| s.waiting && !s.done) else {
            return;
        };
        if r.ended.is_some() {
            return;
        }
        s.waiting = false;
        let _ = r.job.events.send(Event::ToolOutput {
            index: s.index,
            call: d.call,
            output: d.output,
        });
        let slot = s.slot;
        let close = *s
            .reply
            .last()
            .expect("a waiting sequence sampled its closing id");
        let held = &self.held[slot];
        let mut context = Vec::with_capacity(held.len() + 1 + d.forced.len());
        context.extend_from_slice(held);
        context.push(close);
        context.extend_from_slice(&d.forced);
        // One more position for the token sampled after the output.
        if context.len() + 1 > self.dec.capacity() {
            s.done = true;
            let _ = r.job.events.send(Event::Finish {
                index: s.index,
                reason: FinishReason::Length,
            });
            self.release(slot);
            self.retire();
            return;
        }
        let keep = held.len();
        match self.dec.prefill_reusing(slot, keep, &context) {
            Ok(logits) => {
                let s = &mut self.active[ri].seqs[d.seq];
                s.logits = logits;
                s.reply.extend_from_slice(&d.forced);
                self.held[slot] = context;
            }
            Err(e) => {
                tracing::error!("feeding a tool output failed: {e}");
                self.held[slot].clear();
                self.dec.clear(slot);
                let r = &mut self.active[ri];
                r.ended = Some((
                    Outcome::Failed,
                    Some(ApiError::internal(format!("engine: {e}"))),
                ));
                self.retire();
            }
        }
    }

    /// Requests that are done or ended leave the batch; their slots are free at once.
    fn retire(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            let r = &self.active[i];
            let all_done = r.seqs.iter().all(|s| s.done);
            if r.ended.is_none() && !all_done {
                i += 1;
                continue;
            }
            let mut r = self.active.swap_remove(i);
            // Slots and counters first, the last event after: a client that has its answer
            // sees a server that has already moved on.
            for s in r.seqs.iter().filter(|s| !s.done) {
                self.release(s.slot);
            }
            let last = match r.ended.take() {
                None => {
                    self.metrics.count(Outcome::Ok);
                    Event::Done {
                        prompt_tokens: r.job.prompt.len(),
                        completion_tokens: r.completion_tokens,
                    }
                }
                Some((outcome, err)) => {
                    self.metrics.count(outcome);
                    match err {
                        Some(e) => Event::Failed(e),
                        None => continue, // cancelled: nobody is listening
                    }
                }
            };
            let _ = r.job.events.send(last);
        }
    }
}

/// A seed for requests that give none: different every time.
pub fn fresh_seed() -> u64 {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as u64;
    t ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&str], stops: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut t = TextOut::default();
        let mut out = String::new();
        for p in pieces {
            let (s, hit) = t.push(p.as_bytes(), &stops);
            out.push_str(&s);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&t.flush());
        (out, false)
    }

    #[test]
    fn penalties_follow_openais_formula() {
        let p = Penalties {
            presence: 0.5,
            frequency: 0.25,
            bias: vec![(0, 3.0), (9, 1.0)],
        };
        let mut logits = vec![1.0f32; 4];
        let counts = HashMap::from([(1, 2), (2, 1), (7, 4)]);
        p.apply(&mut logits, &counts);
        // id 0: bias only; 1: twice so far; 2: once; 3: untouched; 7 and 9 are outside the logits.
        assert_eq!(logits, vec![4.0, 1.0 - 0.5 - 0.5, 1.0 - 0.25 - 0.5, 1.0]);
        assert!(Penalties::default().is_off() && !p.is_off());
    }

    #[test]
    fn stop_strings_across_tokens_are_cut_and_partial_matches_held() {
        assert_eq!(
            run(&["Hel", "lo ST", "OP here"], &["STOP"]),
            ("Hello ".into(), true)
        );
        assert_eq!(
            run(&["a", "S", "T", "x"], &["STOP"]),
            ("aSTx".into(), false)
        );
        assert_eq!(run(&["ab", "c"], &["zz", "bc"]), ("a".into(), true));
        // Held text is released when the reply ends without the stop string.
        assert_eq!(run(&["end ST"], &["STOP"]), ("end ST".into(), false));
        let mut t = TextOut::default();
        let stops = vec!["STOP".to_string()];
        assert_eq!(t.push(b"x ST", &stops), ("x ".into(), false));
    }

    #[test]
    fn utf8_split_across_tokens_is_kept_whole() {
        let e = "é".as_bytes();
        let mut t = TextOut::default();
        assert_eq!(t.push(&e[..1], &[]), (String::new(), false));
        assert_eq!(t.push(&e[1..], &[]), ("é".into(), false));
        // A stop string with a multi-byte character.
        assert_eq!(run(&["a", "é", "b"], &["éb"]), ("a".into(), true));
    }
}
