//! The Rust SDK proves itself with the client conformance checks
//! (`sdk-spec/conformance/CLIENT.md`), exactly as another SDK would: the
//! harness runs this crate's `hearth-client-driver` behind its proxy,
//! against a real `hearth serve` whose changelog keeps only 10 commits (the
//! `tiny-retention` capability, so the reset check runs too), in JSON and in
//! MessagePack.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hearth_conformance::{run_client_checks, ClientRunOptions, CLIENT_CHECKS};
use hearth_testkit::{TestServer, TestServerOptions};

async fn every_client_check_passes(msgpack: bool) {
    hearth_testkit::hearth_binary().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(400), async {
        let server = TestServer::start(
            TestServerOptions::default().config("[store.retention]\nmax_commits = 10\n"),
        )
        .await
        .unwrap();
        let driver = env!("CARGO_BIN_EXE_hearth-client-driver").to_string();
        let report = run_client_checks(
            &server.base_url(),
            ClientRunOptions::every_check_in_this_repo(server.admin_key(), driver, msgpack),
        )
        .await;
        print!("{}", report.render());
        report.require_all_passed(CLIENT_CHECKS.len()).unwrap();
        assert!(
            report.frames_validated > 100,
            "frames must be schema-checked"
        );
    })
    .await;
    assert!(result.is_ok(), "the client checks must finish within 400 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_passes_every_client_check() {
    every_client_check_passes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_passes_every_client_check_over_msgpack() {
    every_client_check_passes(true).await;
}
