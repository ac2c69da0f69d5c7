//! The code tool end to end on the real interpreter: what Python must do, and hostile programs that
//! must come back as a clean result with the host unaffected. Needs `kiln data fetch` (python-wasm).

use std::sync::OnceLock;
use std::time::Instant;

use kiln_sandbox::{Limits, Sandbox, Status, StopReason};

fn sandbox() -> &'static Sandbox {
    static SB: OnceLock<Sandbox> = OnceLock::new();
    SB.get_or_init(|| {
        let dir = kiln_data::fetch::source_dir(kiln_sandbox::SOURCE_NAME)
            .unwrap_or_else(|e| panic!("{e}"));
        Sandbox::load(&dir.join(kiln_sandbox::WASM_IN_SOURCE)).expect("interpreter loads")
    })
}

fn run(src: &str) -> kiln_sandbox::ToolOutput {
    sandbox().run(src.as_bytes(), &Limits::default())
}

fn ok(src: &str, expected: &str) {
    let out = run(src);
    assert_eq!(out.status, Status::Ok, "{src}: {}", out.text);
    assert_eq!(out.text, expected, "{src}");
}

#[test]
fn big_integers() {
    ok(
        "print(2**200)",
        "1606938044258990275541962092341162602522202993782792835301376\n",
    );
    ok(
        "print(123456789123456789 * 987654321987654321)",
        "121932631356500531347203169112635269\n",
    );
}

#[test]
fn strings() {
    ok(
        "print('strawberry'.count('r'), 'hello'[1:3], 'abc'[::-1])",
        "3 el cba\n",
    );
}

#[test]
fn lists_loops_comprehensions_builtins() {
    ok(
        "xs = [3, 1, 2]\nfor x in xs:\n    print(x)\nprint([x * x for x in range(4)], len(xs), sum(xs), sorted(xs))",
        "3\n1\n2\n[0, 1, 4, 9] 3 6 [1, 2, 3]\n",
    );
}

#[test]
fn empty_program_prints_nothing() {
    ok("", "");
}

#[test]
fn python_errors_show_the_traceback_end() {
    let out = run("print('before')\n1/0");
    assert_eq!(out.status, Status::PythonError);
    assert!(out.text.starts_with("before\n"), "{}", out.text);
    assert!(
        out.text.ends_with("ZeroDivisionError: division by zero\n"),
        "{}",
        out.text
    );
}

#[test]
fn exit_statuses_are_named() {
    // A zero status is a normal end; any other, which Python reports with no message, is named.
    ok("print('done')\nimport sys\nsys.exit(0)", "done\n");
    for (src, code) in [
        ("import sys\nsys.exit(3)", 3),
        ("raise SystemExit(2)", 2),
        ("import os\nos._exit(5)", 5),
    ] {
        let out = run(src);
        assert_eq!(out.status, Status::PythonError, "{src}");
        assert_eq!(out.text, format!("exited with status {code}\n"), "{src}");
    }
    // sys.exit with a message prints it (status 1); the message is what the model sees.
    let out = run("import sys\nsys.exit('bad input')");
    assert_eq!(out.status, Status::PythonError);
    assert_eq!(out.text, "bad input\n");
}

#[test]
fn invalid_python_is_a_syntax_error() {
    let out = run("def (");
    assert_eq!(out.status, Status::PythonError);
    assert!(out.text.contains("SyntaxError"), "{}", out.text);
}

#[test]
fn non_utf8_and_nul_are_clean_errors() {
    let out = sandbox().run(b"print('\xff\xfe')", &Limits::default());
    assert_eq!(out.status, Status::PythonError);
    assert!(out.text.contains("not valid UTF-8"));
    let out = run("print(1)\0print(2)");
    assert_eq!(out.status, Status::PythonError);
    assert!(out.text.contains("null bytes"));
}

#[test]
fn infinite_loop_stops_at_the_cpu_limit() {
    let t = Instant::now();
    let out = run("while True:\n    pass");
    assert_eq!(out.status, Status::Stopped(StopReason::CpuLimit));
    assert_eq!(out.text, "stopped: CPU limit\n");
    assert!(t.elapsed().as_secs() < 30, "took {:?}", t.elapsed());
}

#[test]
fn slow_work_that_fuel_undercounts_stops_at_the_time_limit() {
    // Copying 10 MB strings burns fuel ~170x more slowly per second than a bare loop.
    let limits = Limits {
        fuel: 12_000_000_000,
        wall: std::time::Duration::from_secs(1),
        ..Limits::default()
    };
    let t = Instant::now();
    let out = sandbox().run(b"s = 'a' * 10**7\nwhile True:\n    t = s + 'b'", &limits);
    assert_eq!(out.status, Status::Stopped(StopReason::TimeLimit));
    assert_eq!(out.text, "stopped: time limit\n");
    assert!(
        t.elapsed().as_secs_f64() < 1.5,
        "answered after {:?}",
        t.elapsed()
    );
}

#[test]
fn memory_bomb_is_a_memory_error() {
    let out = run("x = 'a' * (10**9)\nprint(len(x))");
    assert_eq!(out.status, Status::PythonError, "{}", out.text);
    assert!(out.text.contains("MemoryError"), "{}", out.text);
    // Growing a list until it fails, not one big request.
    let out = run("xs = []\nwhile True:\n    xs.append([0] * 100000)");
    assert!(
        matches!(
            out.status,
            Status::PythonError
                | Status::Stopped(
                    StopReason::MemoryLimit | StopReason::CpuLimit | StopReason::TimeLimit
                )
        ),
        "{:?} {}",
        out.status,
        out.text
    );
}

#[test]
fn too_little_memory_for_the_interpreter_is_the_memory_limit() {
    let limits = Limits {
        memory_bytes: 1 << 20,
        ..Limits::default()
    };
    let out = sandbox().run(b"print(1)", &limits);
    assert_eq!(out.status, Status::Stopped(StopReason::MemoryLimit));
    assert_eq!(out.text, "stopped: memory limit\n");
}

#[test]
fn deep_recursion_is_a_recursion_error() {
    let out = run("def f(n):\n    return f(n + 1)\nf(0)");
    assert_eq!(out.status, Status::PythonError);
    assert!(
        out.text
            .ends_with("RecursionError: maximum recursion depth exceeded\n"),
        "{}",
        out.text
    );
    // Raising the limit reaches the sandbox's own bound instead: still a clean result.
    let out = run("import sys\nsys.setrecursionlimit(10**6)\ndef f(n):\n    return f(n + 1)\nf(0)");
    assert_ne!(out.status, Status::Ok, "{}", out.text);
}

#[test]
fn huge_output_is_cut_and_marked() {
    let limits = Limits::default();
    let out = run("while True:\n    print('spam')");
    assert_eq!(out.status, Status::Stopped(StopReason::OutputLimit));
    let marker = format!(
        "\n[output truncated at {} bytes]\nstopped: output limit\n",
        limits.output_bytes
    );
    assert!(
        out.text.ends_with(&marker),
        "{}",
        &out.text[out.text.len() - 100..]
    );
    assert_eq!(out.text.len(), limits.output_bytes + marker.len());
}

#[test]
fn no_processes_files_network_or_environment() {
    for (src, expect) in [
        ("import os\nos.system('ls')", "AttributeError"),
        ("__import__('os').system('ls')", "AttributeError"),
        ("import subprocess\nsubprocess.run(['ls'])", "Error"),
        (
            "import socket\nsocket.socket().connect(('127.0.0.1', 80))",
            "OSError",
        ),
        ("print(open('/etc/passwd').read())", "FileNotFoundError"),
        ("import os\nprint(os.listdir('/'))", "FileNotFoundError"),
    ] {
        let out = run(src);
        assert_eq!(out.status, Status::PythonError, "{src}: {}", out.text);
        assert!(out.text.contains(expect), "{src}: {}", out.text);
        assert!(!out.text.contains("root:"), "{src}");
    }
    ok("import os\nprint(dict(os.environ))", "{}\n");
    ok("import time\nprint(time.time())", "0.0\n");
}

#[test]
fn host_functions_are_out_of_reach() {
    // ctypes needs a dynamic loader the WASI build does not have; wasm imports are not Python.
    let out = run("import ctypes");
    assert_eq!(out.status, Status::PythonError, "{}", out.text);
    // No state leaks from one call into the next.
    ok("x = 41", "");
    let out = run("print(x)");
    assert!(out.text.contains("NameError"), "{}", out.text);
}

#[test]
fn latency_is_reported() {
    let dir = kiln_data::fetch::source_dir(kiln_sandbox::SOURCE_NAME).unwrap();
    let (load_ms, call_ms) =
        kiln_sandbox::measure_latency(&dir.join(kiln_sandbox::WASM_IN_SOURCE)).unwrap();
    eprintln!("sandbox latency: load {load_ms:.0} ms, print(1) {call_ms:.0} ms (indicative: shared machine)");
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const SEEDS: &[&str] = &[
        "print(2**64)",
        "xs = [i for i in range(10)]\nprint(sum(xs))",
        "def f(n):\n    return n * f(n - 1) if n else 1\nprint(f(20))",
        "s = 'strawberry'\nprint(s.count('r'), s[2:5])",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
        /// Mutated programs (bytes cut, replaced, inserted): always a result within the limits.
        #[test]
        fn mutated_programs_return_cleanly(
            seed in 0..SEEDS.len(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..6),
        ) {
            let limits = Limits { fuel: 15_000_000_000, output_bytes: 256, ..Limits::default() };
            let mut src = SEEDS[seed].as_bytes().to_vec();
            for (at, byte, op) in edits {
                let at = at % (src.len() + 1);
                match op {
                    0 if at < src.len() => { src.remove(at); }
                    1 if at < src.len() => src[at] = byte,
                    _ => src.insert(at, byte),
                }
            }
            let out = sandbox().run(&src, &limits);
            prop_assert!(out.fuel_used <= limits.fuel);
            prop_assert!(out.text.len() <= limits.output_bytes + 200, "{}", out.text.len());
            if !matches!(out.status, Status::Ok) {
                prop_assert!(!out.text.is_empty());
            }
        }
    }
}

#[test]
fn errors_keep_their_name_whatever_their_message() {
    // One huge line: the error's name survives, the line is cut.
    let out = run("raise ValueError('x' * 100000)");
    assert_eq!(out.status, Status::PythonError);
    assert!(out.text.contains("ValueError: xxx"), "{}", out.text);
    assert!(out.text.len() < 1500, "{} bytes", out.text.len());
    // A message over many lines: the name and its first lines, not its last.
    let out = run("raise ValueError('\\n'.join(map(str, range(100))))");
    assert!(out.text.contains("ValueError: 0\n1\n"), "{}", out.text);
    assert!(out.text.contains("more lines)"), "{}", out.text);
    // Chained: the error that ended the program is named.
    let out = run("try:\n    1/0\nexcept ZeroDivisionError:\n    raise KeyError('k')");
    assert!(out.text.ends_with("KeyError: 'k'\n"), "{}", out.text);
}

#[test]
fn stderr_is_not_lost_when_the_program_ends_another_way() {
    // Ran to its end, with something on stderr.
    let out = run("import sys\nprint('out')\nprint('careful', file=sys.stderr)");
    assert_eq!(out.status, Status::Ok);
    assert_eq!(out.text, "out\n[stderr]\ncareful\n");
    // Raised while its output was still buffered past the limit: the error, then the stop.
    let out = run("print('a' * 5000)\n1/0");
    assert_eq!(out.status, Status::Stopped(StopReason::OutputLimit));
    assert!(
        out.text
            .ends_with("ZeroDivisionError: division by zero\nstopped: output limit\n"),
        "{}",
        &out.text[out.text.len().saturating_sub(300)..]
    );
}

#[test]
fn odd_sources_are_read_or_refused_readably() {
    ok("\u{feff}print('bom')", "bom\n");
    let big = format!("x = 1\n{}", "# pad\n".repeat(300_000));
    let out = run(&big);
    assert_eq!(out.status, Status::PythonError);
    assert!(
        out.text.starts_with("SyntaxError: the program is"),
        "{}",
        out.text
    );
    // Recursion through a built-in overflows CPython's C stack, not its recursion counter.
    let out = run("def f(n):\n    return list(map(f, [n + 1]))\nf(0)");
    assert!(
        matches!(
            out.status,
            Status::PythonError | Status::Stopped(StopReason::StackLimit)
        ),
        "{:?} {}",
        out.status,
        out.text
    );
    assert!(!out.text.contains("crashed"), "{}", out.text);
}
