//! The JavaScript client (`sdk-spec/reference/js`), written from `sdk-spec/`
//! alone like the Python one, passes every client check against a real
//! `hearth serve`, in JSON and in MessagePack. It also runs its own unit
//! tests (`node --test`).
//!
//! Needs Node.js 18 or later and the client's npm dependencies
//! (`npm ci` in `sdk-spec/reference/js`; `.ci/run` does it). Outside CI the
//! tests skip loudly when either is missing. The unit tests include
//! `test/browser.test.mjs`, which runs the client in Debian's headless
//! Chromium (`/usr/bin/chromium`) against the `hearth` binary given as
//! `HEARTH_BIN`; outside CI it skips loudly without Chromium.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

fn client_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../sdk-spec/reference/js")
}

/// Node.js 18 or later, with the client's dependencies installed.
fn node_ready() -> Result<(), String> {
    hearth_testkit::require_node(18, "the client needs 18")?;
    for package in ["ws", "@msgpack/msgpack"] {
        if !client_dir().join("node_modules").join(package).is_dir() {
            return Err(format!(
                "the npm package {package} is missing: run `npm ci` in sdk-spec/reference/js"
            ));
        }
    }
    Ok(())
}

/// Whether to run; panics in CI when Node or the packages are missing.
fn ready_or_skip() -> bool {
    common::ready_or_skip(node_ready())
}

async fn every_client_check_passes(msgpack: bool) {
    if !ready_or_skip() {
        return;
    }
    let driver = client_dir().join("driver.mjs");
    common::every_client_check_passes(format!("node {}", driver.display()), msgpack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_client_passes_every_client_check() {
    every_client_check_passes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_client_passes_every_client_check_over_msgpack() {
    every_client_check_passes(true).await;
}

#[test]
fn the_js_clients_unit_tests_pass() {
    if !ready_or_skip() {
        return;
    }
    let tests: Vec<PathBuf> = std::fs::read_dir(client_dir().join("test"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    assert!(!tests.is_empty(), "the JS client has unit tests");
    // test/browser.test.mjs starts this binary as a real server (and Debian's
    // Chromium through playwright-core); without it, it skips loudly.
    let hearth = hearth_testkit::hearth_binary().expect("the hearth binary");
    let output = Command::new("node")
        .arg("--test")
        .args(&tests)
        .env("HEARTH_BIN", hearth)
        .current_dir(client_dir())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "node --test failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // A test file that skipped (e.g. no Chromium outside CI) says so loudly.
    for line in String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("!!!!!!!!!! SKIPPED"))
    {
        eprintln!("{line}");
    }
}
