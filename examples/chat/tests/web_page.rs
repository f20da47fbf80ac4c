//! The chat web page's JavaScript (examples/chat/web/index.html) against a
//! real `hearth serve` started as the README says, driven by Node through
//! `web_page.mjs` (a DOM stand-in, Node's WebSocket, and a fetch that
//! enforces CORS like a browser). Skipped, loudly, without Node >= 20.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

mod common;

use common::{chat_server, repo};
use hearth_testkit::TestServer;

/// `node` plus the flag this version needs for a global WebSocket, or None.
fn node() -> Option<Vec<String>> {
    let has_websocket = |flag: Option<&str>| {
        let mut c = Command::new("node");
        c.args(flag);
        c.args([
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ]);
        c.output().is_ok_and(|o| o.status.success())
    };
    if has_websocket(None) {
        Some(vec!["node".into()])
    } else if has_websocket(Some("--experimental-websocket")) {
        Some(vec!["node".into(), "--experimental-websocket".into()])
    } else {
        eprintln!("\n!!!!!!!!!! SKIPPED: the web page test needs Node >= 20 on PATH !!!!!!!!!!\n");
        None
    }
}

async fn run_page(
    node: &[String],
    server: &TestServer,
    origin: &str,
    mode: Option<&str>,
) -> (bool, String) {
    let script = repo().join("examples/chat/tests/web_page.mjs");
    let mut command = tokio::process::Command::new(&node[0]);
    command
        .args(&node[1..])
        .arg(script)
        .arg(server.base_url())
        .arg(origin)
        .args(mode)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the page script finishes")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_signs_in_from_an_allowed_origin_and_chats_live() {
    let Some(node) = node() else {
        return;
    };
    // Building the binary (when stale) is not part of the time limit.
    hearth_testkit::hearth_binary().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(150), async {
        let server = chat_server().await;
        // The origin of `python3 -m http.server -d examples/chat/web 8000`, listed in hearth.toml.
        let (ok, output) = run_page(&node, &server, "http://127.0.0.1:8000", None).await;
        assert!(ok, "{output}\nserver log:\n{}", server.log());
        assert!(
            output.contains("alice: hello from the web page"),
            "{output}"
        );
        assert!(output.contains("bob: hi alice"), "{output}");
    })
    .await;
    assert!(result.is_ok(), "must finish within 150 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_cannot_sign_in_from_an_origin_the_config_does_not_list() {
    let Some(node) = node() else {
        return;
    };
    hearth_testkit::hearth_binary().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(90), async {
        let server = chat_server().await;
        let (ok, output) = run_page(
            &node,
            &server,
            "http://evil.example:9000",
            Some("expect-cors-refusal"),
        )
        .await;
        assert!(ok, "{output}");
    })
    .await;
    assert!(result.is_ok(), "must finish within 90 s");
}
