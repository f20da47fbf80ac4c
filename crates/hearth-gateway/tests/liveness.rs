//! How the gateway decides a connection is dead, and how it closes one that
//! sent a frame far too large: a peer that stops reading and sending is
//! closed with 4010 even while changes keep streaming to it; a frame above
//! twice `max_frame_bytes` gets a 4009 close frame that the client actually
//! reads (not a TCP reset). That a busy reader behind a backlog is *not*
//! idled out is tested deterministically in `conn.rs`
//! (`a_reader_behind_a_backlog_that_the_socket_accepts_is_not_idle`): end
//! to end it depends on kernel buffer sizes and timing.

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use hearth_gateway::GatewayConfig;
use hearth_protocol::{DocPath, Map, Value as HValue, Write};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn big_doc(i: usize, pad: &str) -> Write {
    let mut m = Map::new();
    m.insert("pad".into(), HValue::from(pad));
    m.insert("i".into(), HValue::from(i as i64));
    Write::set(DocPath::parse(&format!("feed/d{i:05}")).expect("path"), m)
}

fn liveness_config() -> GatewayConfig {
    GatewayConfig {
        heartbeat: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..GatewayConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_is_closed_4010_even_while_changes_stream_to_it() {
    let server = start(Options {
        config: liveness_config(),
        ..Options::default()
    })
    .await;
    let mut dead = Client::connect(server.addr, Some("user:dead")).await;
    dead.subscribe("s", json!({"query": {"collection": "feed"}}), None)
        .await;
    // From now on the client neither reads nor sends; changes keep coming,
    // so the server always has something queued for it.
    let pad = "p".repeat(64 * 1024);
    let t0 = tokio::time::Instant::now();
    let mut i = 0;
    while server.gateway.stats().connections > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "a dead peer was never closed: {:?}",
            server.gateway.stats()
        );
        server
            .store
            .commit(vec![big_doc(i, &pad)])
            .await
            .expect("commit");
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The kernel accepts what fits in the socket buffers first; after that
    // no write progress, so the idle clock runs: closed within about one
    // idle timeout of the buffers filling.
    let (code, _) = dead.closed().await;
    assert_eq!(code, 4010, "closed as idle, after {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_far_too_large_is_answered_with_a_readable_4009_close() {
    let config = GatewayConfig {
        max_frame_bytes: 64 * 1024,
        ..GatewayConfig::default()
    };
    let server = start(Options {
        config,
        ..Options::default()
    })
    .await;
    // Large enough that the server refuses it long before the client has
    // finished writing it (the case that used to end in a reset).
    let pad = "z".repeat(4 * 1024 * 1024);
    for round in 0..5 {
        let mut c = Client::connect(server.addr, Some("user:big")).await;
        let frame = json!({"type": "ping", "id": 1, "pad": pad}).to_string();
        // The send itself may fail once the server has closed; what
        // matters is what the client reads afterwards.
        let _ = tokio::time::timeout(Duration::from_secs(10), c.ws.send(Message::text(frame)))
            .await
            .expect("the server reads the whole frame");
        let code = loop {
            match tokio::time::timeout(Duration::from_secs(10), c.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
                Some(Ok(Message::Close(None))) | None => break 1005,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("round {round}: no close frame, the socket failed: {e}"),
            }
        };
        assert_eq!(code, 4009, "round {round}");
    }
}

/// The fan-out engine runs on a thread of its own; it must end with the
/// runtime that started it, releasing the store (whose lock a reopen needs).
#[test]
fn the_engine_thread_ends_with_the_runtime_that_started_it() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let path = runtime.block_on(async {
        let server = start(Options::default()).await;
        let mut c = Client::connect(server.addr, Some("user:a")).await;
        c.subscribe("s", json!({"query": {"collection": "c"}}), None)
            .await;
        let Server {
            dir, store, task, ..
        } = server;
        // Everything of ours goes now; only the gateway's engine may still
        // hold the store. The directory is kept for the reopen below.
        task.abort();
        drop(store);
        dir.keep()
    });
    drop(runtime);
    let config = hearth_store::StoreConfig::new(&path);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match hearth_store::Store::open(config.clone()) {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the store is still held 10 s after the runtime ended: {e}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&path);
}
