//! What a program can make the host spend: the process must outlive any program, its memory must
//! not follow the program's requests, and a program stopped for time must stop running. One test
//! in its own binary, so no other program runs beside it while it watches the process.

use std::time::{Duration, Instant};

use kiln_sandbox::{programs_running, Limits, Sandbox, Status, StopReason};

fn sandbox() -> Sandbox {
    let dir =
        kiln_data::fetch::source_dir(kiln_sandbox::SOURCE_NAME).unwrap_or_else(|e| panic!("{e}"));
    Sandbox::load(&dir.join(kiln_sandbox::WASM_IN_SOURCE)).expect("interpreter loads")
}

/// The process's peak resident memory so far (Linux), MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

#[test]
fn programs_cannot_crash_the_host_grow_its_memory_or_outrun_their_time() {
    let sb = sandbox();

    // Catching MemoryError in a loop: each denied growth used to cost host stack, and ~11,000 of
    // them overflowed the worker thread and aborted the process.
    let out = sb.run(
        b"while True:\n    try:\n        x = 'a' * 10**8\n    except MemoryError:\n        pass",
        &Limits::default(),
    );
    assert_eq!(
        out.status,
        Status::Stopped(StopReason::MemoryLimit),
        "{}",
        out.text
    );
    assert_eq!(out.text, "stopped: memory limit\n");

    // One gathered write of 1024 views of a 2 MB buffer: 2 GB if the host copied them all.
    let before = peak_rss_mib();
    let out = sb.run(
        b"import os\nb = b'x' * 2_000_000\nos.writev(2, [b] * 1024)\nprint('done')",
        &Limits::default(),
    );
    assert_eq!(out.status, Status::Ok, "{}", out.text);
    // The 2 GB on stderr reach the model as a few cut lines.
    assert!(out.text.starts_with("done\n[stderr]\nxxx"), "{}", out.text);
    assert!(out.text.len() < 1500, "{} bytes", out.text.len());
    let out = sb.run(
        b"import os\nb = b'x' * 2_000_000\nos.writev(1, [b] * 1024)",
        &Limits::default(),
    );
    assert_eq!(out.status, Status::Stopped(StopReason::OutputLimit));
    let grew = peak_rss_mib().saturating_sub(before);
    assert!(grew < 300, "the host's peak memory grew by {grew} MiB");

    // Copying 10 MB strings burns fuel slowly: at 50 G fuel this runs ~20 s past a 1 s limit
    // unless the worker stops when the caller stops waiting.
    let limits = Limits {
        wall: Duration::from_secs(1),
        ..Limits::default()
    };
    let out = sb.run(b"s = 'a' * 10**7\nwhile True:\n    t = s + 'b'", &limits);
    assert_eq!(out.status, Status::Stopped(StopReason::TimeLimit));
    let t = Instant::now();
    while programs_running() > 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        programs_running(),
        0,
        "the program still runs {:?} after its time limit",
        t.elapsed()
    );
    eprintln!("the worker stopped {:?} after the answer", t.elapsed());
}
