//! `ws_loadgen`: a load generator for Hearth's realtime gateway that speaks
//! the real protocol (`hearth.v1`, `sdk-spec/PROTOCOL.md`) against a running
//! `hearth serve` on 127.0.0.1.
//!
//! It exists to measure the targets of issue 4 item 7 and issue 5's
//! "realtime during a sign-in storm" (see `benches/RESULTS.md`): paced
//! fan-out latency, burst throughput, server memory per idle subscribed
//! connection, subscription selectivity, and delivery latency while clients
//! sign in as fast as they can.
//!
//! Design, so that the load generator is not the bottleneck:
//! - one current-thread Tokio runtime (pin it to a core with `taskset -c 1`);
//! - one raw tokio-tungstenite connection per subscriber with a small read
//!   buffer and no write buffer, so 10,000 connections cost a few tens of MiB;
//! - frames are not parsed as JSON on the hot path: every benchmark document
//!   carries `"bt": <send time in µs>` and a `changes` frame is scanned for
//!   that key (one occurrence per delivered document), so a frame costs a
//!   substring scan rather than a full parse;
//! - writes go over the socket (`write` frames, admin credential); the send
//!   timestamp is taken just before the frame is serialized;
//! - the load generator's own CPU time (from `/proc/self/stat`) is printed
//!   beside every figure, and the server's (from `/proc/<pid>/stat`) when
//!   `--pid` is given.
//!
//! Every loop is bounded in count and in time (`--max-secs`). Each command
//! ends with one `RESULT {json}` line for scripts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{sleep, timeout, timeout_at};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Parser, Debug)]
#[command(
    name = "ws_loadgen",
    about = "Realtime (WebSocket) load generator for hearth serve"
)]
struct Cli {
    /// Server address (127.0.0.1 only in benchmarks).
    #[arg(long, default_value = "127.0.0.1:8080", global = true)]
    addr: SocketAddr,
    /// Credential sent in `hello` (the admin key). Empty: anonymous (admin under `--dev`).
    #[arg(
        long,
        env = "HEARTH_ADMIN_KEY",
        hide_env_values = true,
        global = true,
        default_value = ""
    )]
    token: String,
    /// The server's pid: its CPU time and RSS are reported.
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// Connections opened concurrently while setting up subscribers.
    #[arg(long, default_value_t = 64, global = true)]
    connect_concurrency: usize,
    /// Hard bound on the whole run.
    #[arg(long, default_value_t = 600, global = true)]
    max_secs: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// N subscribers to one query; one writer creates a document every interval.
    Fanout {
        #[arg(long, default_value_t = 100)]
        subs: usize,
        #[arg(long, default_value_t = 200)]
        writes: usize,
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
    },
    /// N subscribers to one query; documents written as fast as possible by parallel writers.
    Burst {
        #[arg(long, default_value_t = 1000)]
        subs: usize,
        #[arg(long, default_value_t = 1000)]
        docs: usize,
        #[arg(long, default_value_t = 10)]
        writers: usize,
        /// Documents per `write` frame (one atomic batch).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Write frames in flight per writer.
        #[arg(long, default_value_t = 16)]
        window: usize,
    },
    /// Idle connections each holding one subscription; the server's RSS before and after.
    Memory {
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// Seconds to hold the connections after the RSS settled (for external inspection).
        #[arg(long, default_value_t = 0)]
        hold_secs: u64,
    },
    /// N connections each subscribed to its own room; write→delivery latency for one room.
    Selectivity {
        #[arg(long, default_value_t = 10000)]
        conns: usize,
        #[arg(long, default_value_t = 200)]
        writes: usize,
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
    },
    /// Paced delivery p99 alone, then while `clients` sign in as fast as they can.
    SigninStorm {
        #[arg(long, default_value_t = 100)]
        subs: usize,
        #[arg(long, default_value_t = 200)]
        writes: usize,
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Distinct accounts the clients sign in as (created if missing).
        #[arg(long, default_value_t = 16)]
        users: usize,
    },
}

// ---------------------------------------------------------------- clock, CPU

static BASE: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the process's time base (monotonic).
fn now_us() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// utime + stime of a process in seconds (from `/proc/<pid>/stat`, 100 Hz ticks).
fn cpu_secs(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return f64::NAN;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(14) + ticks(15)) / 100.0
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU used by the load generator (and the server) over a measured window.
struct CpuWindow {
    wall: Instant,
    own: f64,
    server: f64,
    pid: Option<u32>,
}

impl CpuWindow {
    fn start(pid: Option<u32>) -> CpuWindow {
        CpuWindow {
            wall: Instant::now(),
            own: cpu_secs(None),
            server: pid.map(|p| cpu_secs(Some(p))).unwrap_or(f64::NAN),
            pid,
        }
    }
    fn end(&self) -> Value {
        let wall = self.wall.elapsed().as_secs_f64();
        let own = cpu_secs(None) - self.own;
        let server = self.pid.map(|p| cpu_secs(Some(p))).unwrap_or(f64::NAN) - self.server;
        json!({
            "wall_s": round3(wall),
            "loadgen_cpu_s": round3(own),
            "loadgen_cpu_pct": round3(100.0 * own / wall),
            "server_cpu_s": if server.is_nan() { Value::Null } else { json!(round3(server)) },
            "server_cpu_pct": if server.is_nan() { Value::Null } else { json!(round3(100.0 * server / wall)) },
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------- stats

/// Shared by every subscriber task of one measurement.
struct Stats {
    /// Deliveries of benchmark documents (`"bt"` occurrences in `changes` frames).
    delivered: AtomicU64,
    first_delivery_us: AtomicU64,
    last_delivery_us: AtomicU64,
    /// Write→delivery latency in µs.
    hist: Mutex<Histogram<u64>>,
    errors: AtomicU64,
    closed: AtomicU64,
    ready: AtomicU64,
    failed: AtomicU64,
    /// `snapshot` frames after the first one (coalescing fallback or reset).
    late_snapshots: AtomicU64,
    frames: AtomicU64,
}

impl Stats {
    fn new() -> Arc<Stats> {
        Arc::new(Stats {
            delivered: AtomicU64::new(0),
            first_delivery_us: AtomicU64::new(u64::MAX),
            last_delivery_us: AtomicU64::new(0),
            hist: Mutex::new(latency_histogram()),
            errors: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            late_snapshots: AtomicU64::new(0),
            frames: AtomicU64::new(0),
        })
    }

    fn latency_json(&self) -> Value {
        latency_json(&self.hist.lock().expect("histogram lock"))
    }

    fn counters_json(&self) -> Value {
        json!({
            "delivered": self.delivered.load(Ordering::Relaxed),
            "frames": self.frames.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
            "closed": self.closed.load(Ordering::Relaxed),
            "connect_failed": self.failed.load(Ordering::Relaxed),
            "late_snapshots": self.late_snapshots.load(Ordering::Relaxed),
        })
    }
}

static PRINTED_ERRORS: AtomicU64 = AtomicU64::new(0);

fn report_error(what: &str) {
    if PRINTED_ERRORS.fetch_add(1, Ordering::Relaxed) < 5 {
        let short: String = what.chars().take(300).collect();
        eprintln!("error: {short}");
    }
}

// ---------------------------------------------------------------- connections

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    token: String,
}

/// Opens a socket with subprotocol `hearth.v1`, sends `hello`, waits for `welcome`.
async fn open(target: &Target) -> Result<Ws, String> {
    let mut req = format!("ws://{}/v1/ws", target.addr)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("hearth.v1"),
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = timeout(
        Duration::from_secs(15),
        tokio_tungstenite::connect_async_with_config(req, Some(config), true),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| format!("connect: {e}"))?;
    let mut hello =
        json!({"type": "hello", "protocol": 1, "client": {"name": "ws_loadgen", "version": "0"}});
    if !target.token.is_empty() {
        hello["token"] = json!(target.token);
    }
    ws.send(Message::text(hello.to_string()))
        .await
        .map_err(|e| format!("hello: {e}"))?;
    let frame = next_text(&mut ws).await?;
    if !frame.contains("\"type\":\"welcome\"") {
        return Err(format!("expected welcome, got {frame}"));
    }
    Ok(ws)
}

/// The next text frame (skipping control frames), within 15 s.
async fn next_text(ws: &mut Ws) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for _ in 0..1000 {
        match timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("timed out waiting for a frame".into()),
            Ok(None) => return Err("connection closed".into()),
            Ok(Some(Err(e))) => return Err(format!("read: {e}")),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.as_str().to_owned()),
            Ok(Some(Ok(Message::Close(c)))) => return Err(format!("closed by server: {c:?}")),
            Ok(Some(Ok(_))) => continue,
        }
    }
    Err("no text frame".into())
}

/// Opens a connection and subscribes to `query`; returns after the first snapshot.
async fn open_subscribed(target: &Target, query: &Value) -> Result<Ws, String> {
    let mut ws = open(target).await?;
    let sub = json!({"type": "subscribe", "id": 1, "sub": "s", "target": {"query": query}});
    ws.send(Message::text(sub.to_string()))
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    let frame = next_text(&mut ws).await?;
    if !frame.contains("\"type\":\"snapshot\"") {
        return Err(format!("expected snapshot, got {frame}"));
    }
    Ok(ws)
}

/// Extracts the unsigned integer that follows `key` at `from` in `s`.
fn parse_u64_at(s: &[u8], from: usize) -> Option<u64> {
    let mut v: u64 = 0;
    let mut any = false;
    for &b in s.get(from..)? {
        if b.is_ascii_digit() {
            v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            any = true;
        } else {
            break;
        }
    }
    any.then_some(v)
}

/// Handles one frame a subscriber received at `t` (µs). Returns a `pong` to send, if any.
fn on_frame(text: &str, t: u64, stats: &Stats) -> Option<String> {
    stats.frames.fetch_add(1, Ordering::Relaxed);
    let head = &text[..text.len().min(40)];
    if head.contains("\"type\":\"changes\"") {
        let bytes = text.as_bytes();
        let key = b"\"bt\":";
        let mut n = 0u64;
        let mut lat = Vec::new();
        let mut i = 0;
        while let Some(pos) = find(&bytes[i..], key) {
            let at = i + pos + key.len();
            if let Some(bt) = parse_u64_at(bytes, at) {
                lat.push(t.saturating_sub(bt).max(1));
                n += 1;
            }
            i = at;
        }
        if n > 0 {
            stats.delivered.fetch_add(n, Ordering::Relaxed);
            stats.first_delivery_us.fetch_min(t, Ordering::Relaxed);
            stats.last_delivery_us.fetch_max(t, Ordering::Relaxed);
            let mut h = stats.hist.lock().expect("histogram lock");
            for l in lat {
                let _ = h.record(l);
            }
        }
        None
    } else if head.contains("\"type\":\"ping\"") {
        let id = serde_json::from_str::<Value>(text)
            .ok()?
            .get("id")?
            .as_u64()?;
        Some(json!({"type": "pong", "id": id}).to_string())
    } else if head.contains("\"type\":\"snapshot\"") {
        stats.late_snapshots.fetch_add(1, Ordering::Relaxed);
        None
    } else if head.contains("\"type\":\"error\"") {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        report_error(text);
        None
    } else {
        None
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One subscriber: connect, subscribe, then read until the run's hard deadline
/// (or until aborted).
async fn subscriber(
    target: Arc<Target>,
    query: Value,
    stats: Arc<Stats>,
    setup: Arc<Semaphore>,
    hard_deadline: tokio::time::Instant,
) {
    let permit = setup.acquire().await;
    let opened = open_subscribed(&target, &query).await;
    drop(permit);
    let mut ws = match opened {
        Ok(ws) => ws,
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            report_error(&e);
            return;
        }
    };
    stats.ready.fetch_add(1, Ordering::Relaxed);
    // No per-task timer while idle: the task ends at the hard deadline or is
    // aborted by `Subscribers::stop`.
    loop {
        let msg = match timeout_at(hard_deadline, ws.next()).await {
            Err(_) => break,
            Ok(None) | Ok(Some(Err(_))) => {
                stats.closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Ok(Some(Ok(m))) => m,
        };
        let t = now_us();
        match msg {
            Message::Text(text) => {
                if let Some(pong) = on_frame(text.as_str(), t, &stats) {
                    if ws.send(Message::text(pong)).await.is_err() {
                        stats.closed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            Message::Close(c) => {
                stats.closed.fetch_add(1, Ordering::Relaxed);
                report_error(&format!("subscriber closed by server: {c:?}"));
                break;
            }
            _ => {}
        }
    }
}

/// A set of subscriber tasks sharing one [`Stats`].
struct Subscribers {
    stats: Arc<Stats>,
    tasks: tokio::task::JoinSet<()>,
}

impl Subscribers {
    /// Spawns one subscriber per query and waits until all are subscribed (or failed).
    async fn start(
        cli: &Cli,
        queries: Vec<Value>,
        stats: Arc<Stats>,
    ) -> Result<Subscribers, String> {
        let target = Arc::new(Target {
            addr: cli.addr,
            token: cli.token.clone(),
        });
        let setup = Arc::new(Semaphore::new(cli.connect_concurrency.max(1)));
        let hard = tokio::time::Instant::now() + Duration::from_secs(cli.max_secs);
        let n = queries.len() as u64;
        let mut tasks = tokio::task::JoinSet::new();
        for q in queries {
            tasks.spawn(subscriber(
                target.clone(),
                q,
                stats.clone(),
                setup.clone(),
                hard,
            ));
        }
        let t0 = Instant::now();
        let limit = Duration::from_secs(cli.max_secs.min(300));
        while stats.ready.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed) < n {
            if t0.elapsed() > limit {
                return Err("subscribers did not connect in time".into());
            }
            sleep(Duration::from_millis(20)).await;
        }
        let failed = stats.failed.load(Ordering::Relaxed);
        eprintln!(
            "{} subscribers ready in {:.2} s ({} failed)",
            stats.ready.load(Ordering::Relaxed),
            t0.elapsed().as_secs_f64(),
            failed
        );
        if failed > 0 {
            return Err(format!("{failed} subscribers failed to connect"));
        }
        Ok(Subscribers { stats, tasks })
    }

    /// Waits until `expected` deliveries arrived or `grace` passed.
    async fn wait_delivered(&self, expected: u64, grace: Duration) {
        let t0 = Instant::now();
        while self.stats.delivered.load(Ordering::Relaxed) < expected && t0.elapsed() < grace {
            sleep(Duration::from_millis(5)).await;
        }
    }

    /// Drops every connection (the server sees the sockets close).
    async fn stop(mut self) {
        self.tasks.abort_all();
        let _ = timeout(Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
    }
}

// ---------------------------------------------------------------- writers

struct WriterReport {
    acked: u64,
    errors: u64,
    first_send_us: u64,
    /// Write frame sent → its `write_ok` received (the durable commit), in µs.
    ack_hist: Histogram<u64>,
}

/// A latency histogram in µs, 1 µs to 10 minutes.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds")
}

/// Count, p50, p99, max and mean of a µs histogram, in ms.
fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| round3(us as f64 / 1000.0);
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
        "mean_ms": round3(h.mean() / 1000.0),
    })
}

/// Writes `count` frames of `batch` documents each over one admin connection,
/// paced every `interval` (None: as fast as `window` frames in flight allow).
/// `doc(i, bt)` gives (path, data) for document i; `bt` is filled in just before sending.
#[allow(clippy::too_many_arguments)]
async fn writer(
    target: Target,
    run: String,
    writer_no: usize,
    count: usize,
    batch: usize,
    interval: Option<Duration>,
    window: usize,
    doc: Arc<dyn Fn(usize) -> (String, Value) + Send + Sync>,
) -> Result<WriterReport, String> {
    let ws = open(&target).await?;
    let (mut tx, mut rx) = ws.split();
    let permits = Arc::new(Semaphore::new(window.clamp(1, 32)));
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let sent_at: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let reader = {
        let (permits, acked, errors) = (permits.clone(), acked.clone(), errors.clone());
        let sent_at = sent_at.clone();
        tokio::spawn(async move {
            let mut ack_hist = latency_histogram();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
            while acked.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed) < count as u64 {
                match timeout_at(deadline, rx.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let head = &t.as_str()[..t.len().min(40)];
                        if head.contains("\"type\":\"write_ok\"") {
                            let now = now_us();
                            let id = serde_json::from_str::<Value>(t.as_str())
                                .ok()
                                .and_then(|v| v["id"].as_u64());
                            let sent = id.and_then(|id| sent_at.lock().ok()?.remove(&id));
                            if let Some(sent) = sent {
                                let _ = ack_hist.record(now.saturating_sub(sent).max(1));
                            }
                            acked.fetch_add(1, Ordering::Relaxed);
                            permits.add_permits(1);
                        } else if head.contains("\"type\":\"error\"") {
                            errors.fetch_add(1, Ordering::Relaxed);
                            report_error(t.as_str());
                            permits.add_permits(1);
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            ack_hist
        })
    };
    let mut ticker = interval.map(|d| {
        let mut t = tokio::time::interval(d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut first_send_us = u64::MAX;
    for i in 0..count {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let permit = timeout(Duration::from_secs(60), permits.acquire())
            .await
            .map_err(|_| "writer: no write_ok within 60 s".to_string())?
            .map_err(|e| e.to_string())?;
        permit.forget();
        let bt = now_us();
        first_send_us = first_send_us.min(bt);
        if let Ok(mut m) = sent_at.lock() {
            m.insert(i as u64 + 1, bt);
        }
        let writes: Vec<Value> = (0..batch)
            .map(|b| {
                let (path, mut data) = doc(i * batch + b);
                data["bt"] = json!(bt);
                json!({"op": "create", "path": path, "data": data})
            })
            .collect();
        let frame = json!({"type": "write", "id": i + 1, "mutation_id": format!("{run}-w{writer_no}-{i}"), "writes": writes});
        tx.send(Message::text(frame.to_string()))
            .await
            .map_err(|e| format!("write: {e}"))?;
    }
    let ack_hist = match timeout(Duration::from_secs(60), reader).await {
        Ok(Ok(h)) => h,
        _ => latency_histogram(),
    };
    Ok(WriterReport {
        acked: acked.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        first_send_us,
        ack_hist,
    })
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("r{:x}", nanos % (1 << 48))
}

// ---------------------------------------------------------------- scenarios

/// Paced fan-out: `subs` subscribers to `collection`, `writes` creates every `interval_ms`.
async fn paced(
    cli: &Cli,
    label: &str,
    subs: usize,
    writes: usize,
    interval_ms: u64,
) -> Result<Value, String> {
    let run = run_id();
    let coll = format!("bench_fanout_{run}");
    let query = json!({"collection": coll, "where": {"field": "g", "op": "==", "value": 1}});
    let stats = Stats::new();
    let s = Subscribers::start(cli, vec![query; subs], stats.clone()).await?;
    sleep(Duration::from_millis(500)).await;
    let cpu = CpuWindow::start(cli.pid);
    let target = Target {
        addr: cli.addr,
        token: cli.token.clone(),
    };
    let c2 = coll.clone();
    let doc = Arc::new(move |i: usize| (format!("{c2}/d{i:06}"), json!({"g": 1, "i": i})));
    let w = writer(
        target,
        run,
        0,
        writes,
        1,
        Some(Duration::from_millis(interval_ms)),
        8,
        doc,
    )
    .await?;
    let expected = (subs * writes) as u64;
    s.wait_delivered(expected, Duration::from_secs(30)).await;
    let cpu = cpu.end();
    let delivered = stats.delivered.load(Ordering::Relaxed);
    let result = json!({
        "scenario": label, "subs": subs, "writes": writes, "interval_ms": interval_ms,
        "expected": expected, "delivered_pct": round3(100.0 * delivered as f64 / expected.max(1) as f64),
        "writes_acked": w.acked, "write_errors": w.errors, "write_ack_latency": latency_json(&w.ack_hist),
        "latency": stats.latency_json(), "counters": stats.counters_json(), "cpu": cpu,
    });
    s.stop().await;
    Ok(result)
}

async fn burst(
    cli: &Cli,
    subs: usize,
    docs: usize,
    writers: usize,
    batch: usize,
    window: usize,
) -> Result<Value, String> {
    let run = run_id();
    let coll = format!("bench_burst_{run}");
    let query = json!({"collection": coll, "where": {"field": "g", "op": "==", "value": 1}});
    let stats = Stats::new();
    let s = Subscribers::start(cli, vec![query; subs], stats.clone()).await?;
    sleep(Duration::from_millis(500)).await;
    let writers = writers.max(1);
    let batch = batch.max(1);
    let frames_per_writer = docs.div_ceil(writers * batch);
    let total_docs = frames_per_writer * writers * batch;
    let cpu = CpuWindow::start(cli.pid);
    let mut handles = Vec::new();
    for w in 0..writers {
        let target = Target {
            addr: cli.addr,
            token: cli.token.clone(),
        };
        let c2 = coll.clone();
        let doc = Arc::new(move |i: usize| (format!("{c2}/w{w}_{i:06}"), json!({"g": 1, "i": i})));
        handles.push(tokio::spawn(writer(
            target,
            run.clone(),
            w,
            frames_per_writer,
            batch,
            None,
            window,
            doc,
        )));
    }
    let mut acked = 0;
    let mut werr = 0;
    let mut first = u64::MAX;
    for h in handles {
        match h.await {
            Ok(Ok(r)) => {
                acked += r.acked;
                werr += r.errors;
                first = first.min(r.first_send_us);
            }
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(e.to_string()),
        }
    }
    let writes_done_us = now_us();
    let expected = (subs * total_docs) as u64;
    s.wait_delivered(expected, Duration::from_secs(60)).await;
    let cpu = cpu.end();
    let delivered = stats.delivered.load(Ordering::Relaxed);
    let last = stats.last_delivery_us.load(Ordering::Relaxed);
    let span_s = (last.saturating_sub(first)) as f64 / 1e6;
    let result = json!({
        "scenario": "burst", "subs": subs, "docs": total_docs, "writers": writers, "batch": batch, "window": window,
        "expected": expected, "delivered_pct": round3(100.0 * delivered as f64 / expected.max(1) as f64),
        "write_frames_acked": acked, "write_errors": werr,
        "writes_span_s": round3((writes_done_us.saturating_sub(first)) as f64 / 1e6),
        "first_write_to_last_delivery_s": round3(span_s),
        "delivered_events_per_s": if span_s > 0.0 { (delivered as f64 / span_s).round() } else { 0.0 },
        "latency": stats.latency_json(), "counters": stats.counters_json(), "cpu": cpu,
    });
    s.stop().await;
    Ok(result)
}

async fn memory(cli: &Cli, conns: usize, hold_secs: u64) -> Result<Value, String> {
    let pid = cli.pid.ok_or("memory needs --pid <server pid>")?;
    let run = run_id();
    let coll = format!("bench_mem_{run}");
    // Warm-up: one connection through every code path before the baseline.
    let warm_stats = Stats::new();
    let warm = Subscribers::start(
        cli,
        vec![json!({"collection": coll, "where": {"field": "room", "op": "==", "value": -1}})],
        warm_stats,
    )
    .await?;
    sleep(Duration::from_secs(2)).await;
    let rss0 = rss_kib(pid).ok_or("cannot read the server's VmRSS")?;
    let stats = Stats::new();
    let queries = (0..conns)
        .map(|k| json!({"collection": coll, "where": {"field": "room", "op": "==", "value": k}}))
        .collect();
    let cpu = CpuWindow::start(cli.pid);
    let s = Subscribers::start(cli, queries, stats.clone()).await?;
    // Steady state: RSS stable within 0.5 % over 1 s, at most 20 s.
    let mut prev = rss_kib(pid).unwrap_or(0);
    let mut rss = prev;
    for _ in 0..20 {
        sleep(Duration::from_secs(1)).await;
        rss = rss_kib(pid).unwrap_or(0);
        if (rss as f64 - prev as f64).abs() <= prev as f64 * 0.005 {
            break;
        }
        prev = rss;
    }
    let own_rss = rss_kib(std::process::id()).unwrap_or(0);
    let cpu = cpu.end();
    let per = if conns > 0 {
        (rss as f64 - rss0 as f64) / conns as f64
    } else {
        0.0
    };
    eprintln!("server VmRSS {rss0} KiB → {rss} KiB with {conns} idle subscribed connections: {per:.2} KiB each");
    if hold_secs > 0 {
        sleep(Duration::from_secs(hold_secs.min(600))).await;
    }
    let result = json!({
        "scenario": "memory", "conns": conns, "rss0_kib": rss0, "rss_kib": rss,
        "kib_per_conn": round3(per), "loadgen_rss_kib": own_rss,
        "counters": stats.counters_json(), "cpu": cpu,
    });
    s.stop().await;
    warm.stop().await;
    Ok(result)
}

async fn selectivity(
    cli: &Cli,
    conns: usize,
    writes: usize,
    interval_ms: u64,
) -> Result<Value, String> {
    let conns = conns.max(1);
    let run = run_id();
    let coll = format!("bench_sel_{run}");
    let queries = (0..conns)
        .map(|k| json!({"collection": coll, "where": {"field": "room", "op": "==", "value": k}}))
        .collect();
    let stats = Stats::new();
    let s = Subscribers::start(cli, queries, stats.clone()).await?;
    sleep(Duration::from_millis(500)).await;
    let room = conns / 2;
    let cpu = CpuWindow::start(cli.pid);
    let target = Target {
        addr: cli.addr,
        token: cli.token.clone(),
    };
    let c2 = coll.clone();
    let doc = Arc::new(move |i: usize| (format!("{c2}/d{i:06}"), json!({"room": room, "i": i})));
    let w = writer(
        target,
        run,
        0,
        writes,
        1,
        Some(Duration::from_millis(interval_ms)),
        8,
        doc,
    )
    .await?;
    let expected = writes as u64;
    s.wait_delivered(expected, Duration::from_secs(30)).await;
    // Anything beyond `expected` would be a delivery to a subscriber of another room.
    sleep(Duration::from_millis(500)).await;
    let cpu = cpu.end();
    let delivered = stats.delivered.load(Ordering::Relaxed);
    let result = json!({
        "scenario": "selectivity", "conns": conns, "unrelated_subscriptions": conns - 1, "room": room,
        "writes": writes, "interval_ms": interval_ms, "expected": expected,
        "delivered_pct": round3(100.0 * delivered.min(expected) as f64 / expected.max(1) as f64),
        "misrouted": delivered.saturating_sub(expected),
        "writes_acked": w.acked, "write_errors": w.errors, "write_ack_latency": latency_json(&w.ack_hist),
        "latency": stats.latency_json(), "counters": stats.counters_json(), "cpu": cpu,
    });
    s.stop().await;
    Ok(result)
}

// ---------------------------------------------------------------- HTTP (sign-in storm)

/// A minimal HTTP/1.1 keep-alive client: enough for JSON POSTs to 127.0.0.1.
struct Http {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Http {
    fn new(addr: SocketAddr) -> Http {
        Http {
            addr,
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// POSTs `body`; returns the status and the response body.
    async fn post(
        &mut self,
        path: &str,
        body: &str,
        bearer: Option<&str>,
    ) -> Result<(u16, Vec<u8>), String> {
        let r = timeout(Duration::from_secs(30), self.post_inner(path, body, bearer)).await;
        match r {
            Ok(Ok(x)) => Ok(x),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err("http request timed out".into())
            }
        }
    }

    async fn post_inner(
        &mut self,
        path: &str,
        body: &str,
        bearer: Option<&str>,
    ) -> Result<(u16, Vec<u8>), String> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            self.stream = Some(s);
            self.buf.clear();
        }
        let stream = self.stream.as_mut().ok_or("no stream")?;
        let auth = bearer
            .map(|b| format!("Authorization: Bearer {b}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n{body}",
            self.addr,
            body.len()
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // Headers.
        let header_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err("response headers too large".into());
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..header_end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("bad status line")?;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or("response without content-length")?;
        let close = head
            .lines()
            .any(|l| l.starts_with("connection:") && l.contains("close"));
        while self.buf.len() < header_end + len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed in body".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[header_end..header_end + len].to_vec();
        self.buf.drain(..header_end + len);
        if close {
            self.stream = None;
        }
        Ok((status, body))
    }
}

#[derive(Default)]
struct StormCounts {
    ok: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
    failed: AtomicU64,
}

async fn signin_storm(
    cli: &Cli,
    subs: usize,
    writes: usize,
    interval_ms: u64,
    clients: usize,
    users: usize,
) -> Result<Value, String> {
    let users = users.max(1);
    let password = "bench-password-1234";
    let run = run_id();
    let emails: Vec<String> = (0..users)
        .map(|u| format!("storm{u}-{run}@bench.test"))
        .collect();
    let mut http = Http::new(cli.addr);
    let admin = (!cli.token.is_empty()).then_some(cli.token.as_str());
    for e in &emails {
        let body = json!({"email": e, "password": password}).to_string();
        let (status, resp) = http.post("/v1/auth/signup", &body, admin).await?;
        if status >= 300 {
            // Fall back to the admin API (signup may be rate-limited per IP).
            let (s2, r2) = http.post("/v1/admin/users", &body, admin).await?;
            if s2 >= 300 {
                return Err(format!(
                    "cannot create user {e}: signup {status} {} / admin {s2} {}",
                    String::from_utf8_lossy(&resp),
                    String::from_utf8_lossy(&r2)
                ));
            }
        }
    }
    let (status, resp) = http
        .post(
            "/v1/auth/login",
            &json!({"email": emails[0], "password": password}).to_string(),
            None,
        )
        .await?;
    if status != 200 {
        return Err(format!(
            "login does not work: {status} {}",
            String::from_utf8_lossy(&resp)
        ));
    }

    let alone = paced(cli, "signin-storm: alone", subs, writes, interval_ms).await?;

    let counts = Arc::new(StormCounts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut storm = Vec::new();
    let hard = Instant::now() + Duration::from_secs(cli.max_secs);
    for c in 0..clients {
        let (counts, stop, addr) = (counts.clone(), stop.clone(), cli.addr);
        let body = json!({"email": emails[c % users], "password": password}).to_string();
        storm.push(tokio::spawn(async move {
            let mut http = Http::new(addr);
            while !stop.load(Ordering::Relaxed) && Instant::now() < hard {
                match http.post("/v1/auth/login", &body, None).await {
                    Ok((200, _)) => counts.ok.fetch_add(1, Ordering::Relaxed),
                    Ok((429, _)) => counts.limited.fetch_add(1, Ordering::Relaxed),
                    Ok((_, b)) => {
                        report_error(&String::from_utf8_lossy(&b));
                        counts.other.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        report_error(&e);
                        sleep(Duration::from_millis(10)).await;
                        counts.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    sleep(Duration::from_secs(1)).await;
    let before = (
        counts.ok.load(Ordering::Relaxed),
        counts.limited.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    let during = paced(cli, "signin-storm: during", subs, writes, interval_ms).await;
    let secs = t0.elapsed().as_secs_f64();
    let after = (
        counts.ok.load(Ordering::Relaxed),
        counts.limited.load(Ordering::Relaxed),
    );
    stop.store(true, Ordering::Relaxed);
    for h in storm {
        let _ = timeout(Duration::from_secs(35), h).await;
    }
    let during = during?;
    let p99 = |v: &Value| v["latency"]["p99_ms"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "scenario": "signin-storm", "clients": clients, "users": users,
        "alone": alone, "during": during,
        "logins_ok_per_s": round3((after.0 - before.0) as f64 / secs),
        "logins_rate_limited_per_s": round3((after.1 - before.1) as f64 / secs),
        "logins_other": counts.other.load(Ordering::Relaxed), "logins_failed": counts.failed.load(Ordering::Relaxed),
        "p99_ratio": round3(p99(&during) / p99(&alone)),
    }))
}

// ---------------------------------------------------------------- main

fn main() {
    let cli = Cli::parse();
    BASE.get_or_init(Instant::now);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    let hard = Duration::from_secs(cli.max_secs + 60);
    let result = rt.block_on(async {
        let work = async {
            match &cli.cmd {
                Cmd::Fanout {
                    subs,
                    writes,
                    interval_ms,
                } => paced(&cli, "fanout", *subs, *writes, *interval_ms).await,
                Cmd::Burst {
                    subs,
                    docs,
                    writers,
                    batch,
                    window,
                } => burst(&cli, *subs, *docs, *writers, *batch, *window).await,
                Cmd::Memory { conns, hold_secs } => memory(&cli, *conns, *hold_secs).await,
                Cmd::Selectivity {
                    conns,
                    writes,
                    interval_ms,
                } => selectivity(&cli, *conns, *writes, *interval_ms).await,
                Cmd::SigninStorm {
                    subs,
                    writes,
                    interval_ms,
                    clients,
                    users,
                } => signin_storm(&cli, *subs, *writes, *interval_ms, *clients, *users).await,
            }
        };
        match timeout(hard, work).await {
            Ok(r) => r,
            Err(_) => Err("run exceeded --max-secs".into()),
        }
    });
    match result {
        Ok(v) => {
            println!("RESULT {v}");
        }
        Err(e) => {
            eprintln!("ws_loadgen failed: {e}");
            println!("RESULT {}", json!({"error": e}));
            std::process::exit(1);
        }
    }
}
