//! Measures the server's resident memory per idle connection holding one
//! subscription (the target: at most 4 KiB). The clients run in a
//! child process (this test binary, re-executed) so that only the gateway's
//! memory is counted. A measurement, not a pass/fail gate on a tight
//! number: run with
//! `cargo test -p hearth-gateway --release --test memory -- --ignored --nocapture`
//! (`HEARTH_MEM_CONNECTIONS=n` sets the count, `HEARTH_MEM_SUBSCRIBE=0`
//! measures bare connections).
//!
//! Measured 2026-11-26 with `hearth serve` and `ws_loadgen memory` (release,
//! see benches/RESULTS.md): 3.6-3.8 KiB per connection at 1,000 connections
//! and 3.2 at 10,000. heaptrack puts the live heap at 2.8 KiB per
//! connection: tokio's task cell (768 bytes, see the size test in
//! `socket.rs`), the subscription and its target, the connection's shared
//! state, tungstenite's read buffer, tokio's socket registration and split
//! halves, the fan-out index; the rest is allocator overhead.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("rss");
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run with --ignored --nocapture"]
async fn idle_subscribed_connections_cost_little_memory() {
    let server = start(Options::default()).await;
    let n: usize = std::env::var("HEARTH_MEM_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    // Warm up: one connection through every code path.
    let mut warm = Client::connect(server.addr, Some("user:w")).await;
    warm.subscribe("s", json!({"query": {"collection": "rooms", "where": {"field": "room", "op": "==", "value": -1}}}), None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes();
    let exe = std::env::current_exe().expect("exe");
    let mut child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "memory_client_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("HEARTH_MEM_ADDR", server.addr.to_string())
        .env("HEARTH_MEM_CONNECTIONS", n.to_string())
        .stdout(Stdio::piped())
        .stdin(Stdio::piped())
        .spawn()
        .expect("client process");
    let stdout = child.stdout.take().expect("stdout");
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("CLIENTS READY"))
    })
    .await
    .expect("join");
    assert!(ready, "client process failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = server.gateway.stats();
    let after = rss_bytes();
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(stats.connections, n + 1);
    if std::env::var("HEARTH_MEM_SUBSCRIBE").map_or(true, |v| v != "0") {
        assert_eq!(stats.subscriptions, n + 1);
    }
    let per = (after.saturating_sub(before)) as f64 / n as f64 / 1024.0;
    println!("RESULT idle subscribed connections: {n}; RSS before {} KiB, after {} KiB; {per:.2} KiB per connection", before / 1024, after / 1024);
}

/// Runs in the child process: opens the connections and holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of idle_subscribed_connections_cost_little_memory"]
async fn memory_client_process() {
    let Ok(addr) = std::env::var("HEARTH_MEM_ADDR") else {
        return;
    };
    let n: usize = std::env::var("HEARTH_MEM_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut sockets = Vec::with_capacity(n);
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0);
    for k in 0..n {
        let url = format!("ws://{addr}/v1/ws");
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
            .await
            .expect("connect");
        let hello = json!({"type": "hello", "protocol": 1, "client": {"name": "mem", "version": "0"}, "token": format!("user:u{k}")});
        ws.send(Message::text(hello.to_string()))
            .await
            .expect("hello");
        let sub = json!({"type": "subscribe", "id": 1, "sub": "s",
                         "target": {"query": {"collection": "rooms", "where": {"field": "room", "op": "==", "value": k}}}});
        ws.send(Message::text(sub.to_string()))
            .await
            .expect("subscribe");
        let mut got = 0;
        while got < 2 {
            if let Some(Ok(Message::Text(_))) = ws.next().await {
                got += 1;
            }
        }
        sockets.push(ws);
    }
    println!("CLIENTS READY");
    // Hold the sockets until the parent closes our stdin.
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await;
    drop(sockets);
}
