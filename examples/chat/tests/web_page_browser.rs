//! The chat web page (examples/chat/web/index.html) in a real headless
//! Chromium against a real `hearth serve`, both started as the README says:
//! the server with the chat rules and `examples/chat/hearth.toml`, the page
//! served by `python3 -m http.server -d examples/chat/web 8000` and opened
//! at http://127.0.0.1:8000/, the origin that config allows.
//! `browser_page.mjs` drives Debian's Chromium with playwright-core: two
//! users in separate browser contexts sign up through the form, one invites
//! the other, and lines typed on each page appear in the other's DOM; the
//! server is killed (kill -9) and restarted on the same port and data, a
//! line typed meanwhile is sent once both pages have reconnected by
//! themselves, and shown once; the page served from an origin the config
//! does not list is refused sign-in by the browser's own CORS check.
//!
//! When port 8000 is taken (say, by the README's own `http.server`), the
//! page is served on a free port and the config's two origins are moved to
//! that port, with a note on stderr. (Opening the page at a different
//! address than it is served from, by intercepting requests, does not work:
//! Chromium's Local Network Access checks then refuse the page the loopback
//! server.)
//!
//! Needs Node >= 20, `npm ci` in sdk-spec/reference/js (playwright-core),
//! Chromium at /usr/bin/chromium (or `CHROMIUM`) and python3. Outside CI a
//! missing one skips the test with a banner on stderr; in CI (`CI` set) it
//! fails the test (`.ci/run` installs them). `SCREENSHOT=/tmp/chat.png`
//! keeps a screenshot of the first user's page.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

mod common;

use common::{chat_server, repo};
use hearth_testkit::{TestServer, TestServerOptions};

/// The port of the README's `python3 -m http.server -d examples/chat/web 8000`.
const README_PAGE_PORT: u16 = 8000;

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Everything the browser test needs, or why it cannot run.
fn browser_ready() -> Result<(), String> {
    hearth_testkit::require_node(20, "playwright-core needs 20")?;
    if !repo()
        .join("sdk-spec/reference/js/node_modules/playwright-core")
        .is_dir()
    {
        return Err(
            "playwright-core is missing: run `npm ci` in sdk-spec/reference/js".to_string(),
        );
    }
    if !chromium().is_file() {
        return Err(format!(
            "no Chromium at {} (apt-get install chromium, or set CHROMIUM)",
            chromium().display()
        ));
    }
    let python = Command::new("python3")
        .arg("--version")
        .output()
        .map_err(|e| format!("python3 is not installed ({e})"))?;
    if !python.status.success() {
        return Err("python3 --version failed".to_string());
    }
    Ok(())
}

/// Whether to run: outside CI a missing tool skips the test with a banner;
/// in CI it fails it.
fn ready_or_skip() -> bool {
    match browser_ready() {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must provide this (.ci/run installs it): {why}"
            );
            eprintln!(
                "\n!!!!!!!!!! SKIPPED: the chat page's real-browser test: {why} !!!!!!!!!!\n"
            );
            false
        }
    }
}

/// The server as the README starts it (chat rules, `examples/chat/hearth.toml`),
/// with the config's page origins moved from port 8000 to `page_port`.
async fn chat_server_for_page_port(page_port: u16) -> TestServer {
    if page_port == README_PAGE_PORT {
        return chat_server().await;
    }
    let config = std::fs::read_to_string(repo().join("examples/chat/hearth.toml")).unwrap();
    let listed = format!("\"http://127.0.0.1:{README_PAGE_PORT}\"");
    assert!(config.contains(&listed), "hearth.toml allows {listed}");
    let config = config.replace(
        &format!(":{README_PAGE_PORT}\""),
        &format!(":{page_port}\""),
    );
    let rules = repo().join("crates/hearth-rules/examples/chat.rules");
    TestServer::start(
        TestServerOptions::default()
            .config(config)
            .arg("--rules")
            .arg(rules.display().to_string()),
    )
    .await
    .unwrap()
}

/// `python3 -m http.server --bind 127.0.0.1 -d examples/chat/web <port>`, as
/// the README serves the page; killed on drop.
async fn static_server(port: u16) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", "-d"])
        .arg(repo().join("examples/chat/web"))
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("python3 -m http.server on port {port} exited with {status}");
        }
        if let Ok(r) = http.get(&url).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "python3 -m http.server did not serve {url} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, url)
}

/// Runs browser_page.mjs, doing what it asks on stdout (`CONTROL
/// kill-server`, `CONTROL restart-server`) and answering `done` on its stdin.
/// Returns everything it printed; panics unless it exits 0 within 120 s.
async fn run_script(server: &mut TestServer, page_url: &str, unlisted_url: &str) -> String {
    let script = repo().join("examples/chat/tests/browser_page.mjs");
    // The script closes the browser on every path and gives up after 90 s;
    // kill_on_drop is the last resort (Chromium also exits when its
    // DevTools pipe to a killed Node closes).
    let mut child = tokio::process::Command::new("node")
        .arg(script)
        .arg(server.base_url())
        .arg(page_url)
        .arg(unlisted_url)
        .env("CHROMIUM", chromium())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut transcript = String::new();
    let finished = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            transcript.push_str(&line);
            transcript.push('\n');
            match line.as_str() {
                "CONTROL kill-server" => server.kill_9(),
                "CONTROL restart-server" => server.restart().await.unwrap(),
                _ => continue,
            }
            stdin.write_all(b"done\n").await.unwrap();
        }
        child.wait().await.unwrap()
    })
    .await;
    let status = match finished {
        Ok(status) => status,
        Err(_) => {
            let _ = child.kill().await;
            panic!(
                "browser_page.mjs did not finish within 120 s:\n{transcript}\nserver log:\n{}",
                server.log()
            );
        }
    };
    transcript.push_str(&errors.await.unwrap());
    assert!(
        status.success(),
        "browser_page.mjs failed ({status}):\n{transcript}\nserver log:\n{}",
        server.log()
    );
    transcript
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_two_users_sign_up_invite_chat_live_resume_after_a_server_restart_and_an_unlisted_origin_cannot_sign_in(
) {
    if !ready_or_skip() {
        return;
    }
    // Building the binary (when stale) is not part of the time limit.
    hearth_testkit::hearth_binary().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(150), async {
        let page_port = if std::net::TcpListener::bind(("127.0.0.1", README_PAGE_PORT)).is_ok() {
            README_PAGE_PORT
        } else {
            let port = hearth_testkit::free_port();
            eprintln!(
                "note: 127.0.0.1:{README_PAGE_PORT} is taken: the page is served on port {port}, \
                 and the server allows that origin instead"
            );
            port
        };
        let (_page_server, page_url) = static_server(page_port).await;
        // The same page from an origin the config does not list.
        let (_unlisted_server, unlisted_url) = static_server(hearth_testkit::free_port()).await;
        let mut server = chat_server_for_page_port(page_port).await;
        let transcript = run_script(&mut server, &page_url, &unlisted_url).await;
        assert!(
            transcript.contains("OK: [\"alice: hello from alice's browser\""),
            "{transcript}"
        );
    })
    .await;
    assert!(result.is_ok(), "must finish within 150 s");
}
