//! The Python reference client (`sdk-spec/reference/python`), written from
//! `sdk-spec/` alone, passes every client check against a real `hearth
//! serve` (with tiny retention, so the reset check runs too). This keeps the
//! spec honest: a second client, in another language and by another author,
//! must keep working from the documents as they change.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hearth_conformance::{run_client_checks, ClientRunOptions, CLIENT_CHECKS};
use hearth_testkit::{TestServer, TestServerOptions};

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
    if python_with_websockets() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide python3 with websockets and msgpack (.ci/run installs them)"
    );
    eprintln!("SKIPPED: python3 with the websockets and msgpack packages is not installed");
    false
}

async fn every_client_check_passes(msgpack: bool) {
    if !ready_or_skip() {
        return;
    }
    hearth_testkit::hearth_binary().unwrap();
    let driver = repo().join("sdk-spec/reference/python/driver.py");
    let result = tokio::time::timeout(Duration::from_secs(400), async {
        let server = TestServer::start(
            TestServerOptions::default().config("[store.retention]\nmax_commits = 10\n"),
        )
        .await
        .unwrap();
        let driver = format!("python3 {}", driver.display());
        let report = run_client_checks(
            &server.base_url(),
            ClientRunOptions::every_check_in_this_repo(server.admin_key(), driver, msgpack),
        )
        .await;
        print!("{}", report.render());
        report.require_all_passed(CLIENT_CHECKS.len()).unwrap();
    })
    .await;
    assert!(result.is_ok(), "the client checks must finish within 400 s");
}

/// The client's unit tests (`test_persistence.py`: the persistent write
/// queue's journal, lock, restore, sent marker and 23-hour rule).
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
