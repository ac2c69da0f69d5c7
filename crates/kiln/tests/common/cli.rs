//! Running the built `kiln` binary from the integration tests (one copy; several test files had
//! their own).

#![allow(dead_code)] // each test file uses some of these

use std::process::{Command, Output};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_kiln");

/// `kiln args…`, its logs at `warn` so that stderr holds what a test asserts on.
pub fn kiln(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kiln")
}

/// `kiln args…` that must succeed; its stdout.
pub fn ok(args: &[&str]) -> String {
    let o = kiln(args);
    assert!(
        o.status.success(),
        "kiln {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
