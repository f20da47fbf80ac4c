//! Shared by the chat example's end-to-end tests: the server exactly as the
//! README starts it.

use std::path::PathBuf;

use hearth_testkit::{TestServer, TestServerOptions};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The server exactly as the README starts it (rules + example config).
pub async fn chat_server() -> TestServer {
    let config = std::fs::read_to_string(repo().join("examples/chat/hearth.toml")).unwrap();
    TestServer::start(
        TestServerOptions::default()
            .config(config)
            .arg("--rules")
            .arg(
                repo()
                    .join("crates/hearth-rules/examples/chat.rules")
                    .display()
                    .to_string(),
            ),
    )
    .await
    .unwrap()
}
