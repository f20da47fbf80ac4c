//! Shared by the reference-client tests: running a driver through every
//! client check against a real `hearth serve`, and skipping loudly (never
//! in CI) when the driver's language runtime is missing.

use std::time::Duration;

use hearth_conformance::{run_client_checks, ClientRunOptions, CLIENT_CHECKS};
use hearth_testkit::{TestServer, TestServerOptions};

/// Whether to run: `ready` says why not. Outside CI a missing runtime skips
/// the test with a message; in CI it fails it (`.ci/run` installs them).
pub fn ready_or_skip(ready: Result<(), String>) -> bool {
    match ready {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must provide this (.ci/run installs it): {why}"
            );
            eprintln!("SKIPPED: {why}");
            false
        }
    }
}

/// Runs `driver` (a shell command) through every client check against a
/// fresh `hearth serve` whose changelog keeps 10 commits (the
/// `tiny-retention` capability, so the reset check runs too).
pub async fn every_client_check_passes(driver: String, msgpack: bool) {
    hearth_testkit::hearth_binary().expect("the hearth binary");
    let result = tokio::time::timeout(Duration::from_secs(400), async {
        let server = TestServer::start(
            TestServerOptions::default().config("[store.retention]\nmax_commits = 10\n"),
        )
        .await
        .expect("hearth serve starts");
        let report = run_client_checks(
            &server.base_url(),
            ClientRunOptions::every_check_in_this_repo(server.admin_key(), driver, msgpack),
        )
        .await;
        print!("{}", report.render());
        if let Err(e) = report.require_all_passed(CLIENT_CHECKS.len()) {
            panic!("{e}");
        }
    })
    .await;
    assert!(result.is_ok(), "the client checks must finish within 400 s");
}
