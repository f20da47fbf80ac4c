//! Runs every conformance scenario against a real `hearth serve` process
//! (started by hearth-testkit), as CI does. Scenarios that need a specially
//! configured server get one: `tiny-retention` runs against a second server
//! whose changelog keeps only 10 commits, `fast-heartbeat` against one whose
//! `[gateway]` pings every 300 ms and closes idle connections after 1.5 s
//! (the configs are the ones `sdk-spec/conformance/README.md` lists).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use hearth_conformance::{run_with, Outcome, RunOptions};
use hearth_testkit::{TestServer, TestServerOptions};

fn scenarios_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../sdk-spec/conformance/scenarios")
}

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../sdk-spec/schema")
}

fn assert_clean(report: &hearth_conformance::Report, what: &str) {
    print!("{}", report.render());
    assert!(
        report.setup_error.is_none(),
        "{what}: {:?}",
        report.setup_error
    );
    let failed: Vec<String> = report
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed { .. }))
        .map(|r| r.name.clone())
        .collect();
    assert!(failed.is_empty(), "{what}: failing scenarios {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_passes_against_a_default_server() {
    every_scenario_passes(false).await;
}

/// The same scenarios, every frame in MessagePack (`hearth.v1.msgpack`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_passes_over_msgpack() {
    every_scenario_passes(true).await;
}

async fn every_scenario_passes(msgpack: bool) {
    // Building the binary (when stale) is not part of the time limit.
    hearth_testkit::hearth_binary().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(240), async {
        let server = TestServer::start(TestServerOptions::default())
            .await
            .unwrap();
        let report = run_with(
            &server.base_url(),
            &scenarios_dir(),
            RunOptions {
                admin_key: Some(server.admin_key().to_string()),
                schema_dir: Some(schema_dir()),
                msgpack,
                ..RunOptions::default()
            },
        )
        .await;
        assert_clean(&report, if msgpack { "msgpack" } else { "default server" });
        assert!(report.passed() >= 30, "{}", report.summary_line());
        assert!(
            report.frames_validated > 100,
            "schemas must check the frames"
        );
    })
    .await;
    assert!(result.is_ok(), "the suite must finish within 240 s");
}

/// Runs the scenarios matching `filter` that need `capability` against a
/// server started with `config`, and expects exactly one to pass.
async fn passes_on_a_server_with(config: &str, capability: &str, filter: &str) {
    // Building the binary (when stale) is not part of the time limit.
    hearth_testkit::hearth_binary().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(120), async {
        let server = TestServer::start(TestServerOptions::default().config(config))
            .await
            .unwrap();
        let report = run_with(
            &server.base_url(),
            &scenarios_dir(),
            RunOptions {
                admin_key: Some(server.admin_key().to_string()),
                schema_dir: Some(schema_dir()),
                capabilities: vec![capability.into()],
                filter: Some(filter.into()),
                msgpack: false,
            },
        )
        .await;
        assert_clean(&report, &format!("{capability} server"));
        assert_eq!(report.passed(), 1, "{}", report.summary_line());
    })
    .await;
    assert!(result.is_ok(), "must finish within 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_past_retention_passes_against_a_tiny_retention_server() {
    passes_on_a_server_with(
        "[store.retention]\nmax_commits = 10\n",
        "tiny-retention",
        "retention",
    )
    .await;
}

/// The `[gateway]` config that offers the `fast-heartbeat` capability.
const FAST_HEARTBEAT_CONFIG: &str = "[gateway]\nheartbeat = \"300ms\"\nidle_timeout = \"1500ms\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_and_idle_timeout_pass_against_a_fast_heartbeat_server() {
    passes_on_a_server_with(FAST_HEARTBEAT_CONFIG, "fast-heartbeat", "heartbeat").await;
}

/// The client checks are not fooled by a driver that claims success without
/// doing anything, and a driver that never answers fails in bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_checks_fail_a_driver_that_does_not_do_the_work() {
    hearth_testkit::hearth_binary().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(120), async {
        let server = TestServer::start(TestServerOptions::default())
            .await
            .unwrap();
        for (driver, why) in [
            // Answers `connect` with `ok` but never opens a connection.
            (
                r#"read line; echo '{"id":1,"ok":{}}'; cat > /dev/null"#,
                "the client sent no frame",
            ),
            // Prints something that is not the line protocol, then nothing.
            ("echo hello; cat > /dev/null", "no reply to command 1"),
        ] {
            let report = hearth_conformance::run_client_checks(
                &server.base_url(),
                hearth_conformance::ClientRunOptions {
                    admin_key: server.admin_key().to_string(),
                    driver: driver.to_string(),
                    schema_dir: Some(schema_dir()),
                    filter: Some("handshake".into()),
                    ..Default::default()
                },
            )
            .await;
            print!("{}", report.render());
            assert_eq!(report.failed(), 1, "{driver}");
            match &report.results[0].outcome {
                Outcome::Failed { reason, .. } => assert!(reason.contains(why), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
        // Schemas that cannot be found fail the run instead of silently
        // validating nothing.
        let report = hearth_conformance::run_client_checks(
            &server.base_url(),
            hearth_conformance::ClientRunOptions {
                admin_key: server.admin_key().to_string(),
                driver: "cat > /dev/null".into(),
                schema_dir: Some(schema_dir().join("no-such-folder")),
                ..Default::default()
            },
        )
        .await;
        assert!(
            report
                .setup_error
                .as_deref()
                .is_some_and(|e| e.contains("JSON Schemas are not at")),
            "{:?}",
            report.setup_error
        );
        assert!(!report.success());
    })
    .await;
    assert!(result.is_ok(), "must finish within 120 s");
}
