//! The Python reference client (`sdk-spec/reference/python`), written from
//! `sdk-spec/` alone, passes every client check against a real `hearth
//! serve` (with tiny retention, so the reset check runs too). This keeps the
//! spec honest: a second client, in another language and by another author,
//! must keep working from the documents as they change.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `python3` with the `websockets` and `msgpack` packages (`.ci/run`
/// installs them).
fn python_with_websockets() -> bool {
    Command::new("python3")
        .args(["-c", "import websockets, msgpack"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_reference_client_passes_every_client_check() {
    every_client_check_passes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_reference_client_passes_every_client_check_over_msgpack() {
    every_client_check_passes(true).await;
}

/// Whether to run; panics in CI when Python or its packages are missing.
fn ready_or_skip() -> bool {
    common::ready_or_skip(if python_with_websockets() {
        Ok(())
    } else {
        Err("python3 with the websockets and msgpack packages is not installed".into())
    })
}

async fn every_client_check_passes(msgpack: bool) {
    if !ready_or_skip() {
        return;
    }
    let driver = repo().join("sdk-spec/reference/python/driver.py");
    common::every_client_check_passes(format!("python3 {}", driver.display()), msgpack).await;
}

/// The client's unit tests (`test_persistence.py`: the persistent write
/// queue's journal, lock, restore, sent marker and 23-hour rule, and the
/// offline view cache's records, resume, bound and clearing).
#[test]
fn the_python_clients_unit_tests_pass() {
    if !ready_or_skip() {
        return;
    }
    let output = Command::new("python3")
        .args(["-m", "unittest", "-v", "test_persistence"])
        .current_dir(repo().join("sdk-spec/reference/python"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python3 -m unittest failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
