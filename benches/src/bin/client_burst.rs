//! How long the Rust client takes to store a burst of writes made offline
//! with persistence on (`ClientConfig::persistence`): each write must be
//! synced to disk before it shows or goes out, so this is the cost an
//! application pays for a burst (an import, a batch of edits) on this disk.
//!
//! ```text
//! client_burst --writes 500 --rounds 9 [--memory]
//! ```
//!
//! Each round starts a client on a fresh directory with no server to reach,
//! makes `--writes` `set`s as fast as the API takes them, and times until the
//! client counts them all pending (stored, shown, queued). `--memory` runs the
//! same without persistence, as a baseline of the in-memory work.

use std::time::{Duration, Instant};

use clap::Parser;
use hearth_client::{Client, ClientConfig};
use hearth_protocol::{DocPath, Map, Value};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 500)]
    writes: usize,
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// No persistence directory (the in-memory baseline).
    #[arg(long)]
    memory: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let mut times = Vec::new();
    for _ in 0..args.rounds {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // Nothing listens on port 9: the client stays offline.
        let mut config = ClientConfig::new("ws://127.0.0.1:9/v1/ws");
        if !args.memory {
            config = config.persistence(dir.path());
        }
        let client = Client::start(config).expect("the client starts");
        let started = Instant::now();
        for i in 0..args.writes {
            let mut data = Map::new();
            data.insert("i".into(), Value::Integer(i as i64));
            let path = DocPath::parse(&format!("burst/d{i}")).expect("a valid path");
            drop(client.set(path, data));
        }
        let deadline = started + Duration::from_secs(120);
        while client.stats().pending_writes < args.writes as u64 {
            assert!(
                Instant::now() < deadline,
                "the burst was not stored in time"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        times.push(started.elapsed());
        client.shutdown().await;
    }
    times.sort();
    let median = times[times.len() / 2];
    let per_write = median.as_secs_f64() * 1e6 / args.writes as f64;
    println!(
        "{} writes, {}: median {:.2} ms ({per_write:.1} µs per write); all rounds (ms): {:?}",
        args.writes,
        if args.memory {
            "in memory"
        } else {
            "persisted"
        },
        median.as_secs_f64() * 1e3,
        times
            .iter()
            .map(|t| (t.as_secs_f64() * 1e5).round() / 100.0)
            .collect::<Vec<_>>()
    );
    println!(
        "RESULT {{\"writes\":{},\"persisted\":{},\"median_ms\":{:.3},\"us_per_write\":{per_write:.2}}}",
        args.writes,
        !args.memory,
        median.as_secs_f64() * 1e3
    );
}
