//! The Rust SDK proves itself with the client conformance checks
//! (`sdk-spec/conformance/CLIENT.md`), exactly as another SDK would: the
//! harness runs this crate's `hearth-client-driver` behind its proxy,
//! against a real `hearth serve` whose changelog keeps only 10 commits (the
//! `tiny-retention` capability, so the reset check runs too), in JSON and in
//! MessagePack.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
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
        let report = run_client_checks(
            &server.base_url(),
            ClientRunOptions {
                admin_key: server.admin_key().to_string(),
                driver: env!("CARGO_BIN_EXE_hearth-client-driver").to_string(),
                schema_dir: Some(
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../sdk-spec/schema"),
                ),
                capabilities: vec!["tiny-retention".into()],
                filter: None,
                msgpack,
            },
        )
        .await;
        print!("{}", report.render());
        let failed = report.not_passed();
        assert!(report.setup_error.is_none(), "{:?}", report.setup_error);
        assert!(failed.is_empty(), "checks not passed: {failed:?}");
        assert_eq!(report.passed(), CLIENT_CHECKS.len());
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
