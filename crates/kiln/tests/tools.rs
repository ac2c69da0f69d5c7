//! `kiln tool code` run as the real binary: prints exactly what the model sees, exits 0 when the
//! program ran and 1 when Python raised or the sandbox stopped it, and never crashes or hangs.
//! Needs `kiln data fetch` (python-wasm).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tool_code(program: &[u8], extra: &[&str]) -> (i32, String, Duration) {
    kiln_data::fetch::source_dir("python-wasm").unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["tool", "code"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln runs");
    child.stdin.take().unwrap().write_all(program).unwrap();
    let out = child.wait_with_output().unwrap();
    let code = out.status.code().expect("exited, not killed by a signal");
    (
        code,
        String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        t.elapsed(),
    )
}

#[test]
fn a_program_that_runs_exits_zero_with_its_output() {
    let (code, out, _) = tool_code(b"print(sum(range(101)), 'strawberry'.count('r'))\n", &[]);
    assert_eq!((code, out.as_str()), (0, "5050 3\n"));
}

#[test]
fn python_errors_exit_one_with_the_traceback_on_stdout() {
    let (code, out, _) = tool_code(b"print('hi')\nraise ValueError('nope')\n", &[]);
    assert_eq!(code, 1);
    assert!(out.starts_with("hi\n"), "{out}");
    assert!(out.ends_with("ValueError: nope\n"), "{out}");
    let (code, out, _) = tool_code(b"def (", &[]);
    assert_eq!(code, 1);
    assert!(out.contains("SyntaxError"), "{out}");
    let (code, out, _) = tool_code(b"\xff\xfe\n", &[]);
    assert_eq!(code, 1);
    assert!(out.contains("not valid UTF-8"), "{out}");
}

#[test]
fn the_sandbox_stopping_a_program_exits_one_with_the_reason() {
    let (code, out, took) = tool_code(b"while True:\n    pass\n", &[]);
    assert_eq!((code, out.as_str()), (1, "stopped: CPU limit\n"));
    assert!(took < Duration::from_secs(60), "{took:?}");
    let (code, out, _) = tool_code(
        b"while True:\n    print('x' * 50)\n",
        &["--output-bytes", "100"],
    );
    assert_eq!(code, 1);
    assert!(
        out.ends_with("[output truncated at 100 bytes]\nstopped: output limit\n"),
        "{out}"
    );
    let (code, out, _) = tool_code(b"print(open('/etc/passwd').read())\n", &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FileNotFoundError") && !out.contains("root:"),
        "{out}"
    );
}

#[test]
fn an_empty_program_runs_and_prints_nothing() {
    assert_eq!(tool_code(b"", &[]).0, 0);
    assert_eq!(tool_code(b"", &[]).1, "");
}
