//! End-to-end REST load generator: `POST /v1/db/{collection}` creates of
//! ~200-byte documents from N concurrent clients, each on its own keep-alive
//! HTTP/1.1 connection, one request in flight per client.
//!
//! It speaks HTTP/1.1 over raw tokio sockets on a single-threaded runtime so
//! that its own CPU cost per request stays small and measurable (it reports
//! its CPU time from /proc/self/stat). Latency is from writing the request to
//! reading the whole response, recorded in an HDR histogram.
//!
//! ```text
//! taskset -c 0 target/release/hearth serve --data /tmp/bench --listen 127.0.0.1:8099 &
//! taskset -c 1 target/release/loadgen --url http://127.0.0.1:8099 --admin-key KEY --clients 1,16,64 --seconds 10
//! ```

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Args {
    addr: String,
    key: String,
    clients: Vec<usize>,
    seconds: u64,
    warmup: u64,
    collection: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:8080".into(),
        key: std::env::var("HEARTH_ADMIN_KEY").unwrap_or_default(),
        clients: vec![1, 16, 64],
        seconds: 10,
        warmup: 2,
        collection: "bench".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => {
                let v = value()?;
                args.addr = v
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string();
            }
            "--admin-key" => args.key = value()?,
            "--clients" => {
                args.clients = value()?
                    .split(',')
                    .map(|c| c.trim().parse().map_err(|e| format!("--clients: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--seconds" => args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--warmup" => args.warmup = value()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--collection" => args.collection = value()?,
            "--help" | "-h" => {
                return Err("usage: loadgen --url http://HOST:PORT --admin-key KEY [--clients 1,16,64] [--seconds 10] [--warmup 2] [--collection bench]".into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // fields[0] is field 3 (state), so utime (14) is fields[11], stime (15) fields[12].
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

struct Conn {
    reader: BufReader<TcpStream>,
    line: String,
}

impl Conn {
    async fn connect(addr: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(stream),
            line: String::new(),
        })
    }

    /// Sends one request and reads the response; returns the status.
    async fn request(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<u16> {
        let stream = self.reader.get_mut();
        stream.write_all(head).await?;
        stream.write_all(body).await?;
        self.line.clear();
        self.reader.read_line(&mut self.line).await?;
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {:?}", self.line)))?;
        let mut length = 0usize;
        loop {
            self.line.clear();
            self.reader.read_line(&mut self.line).await?;
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).await?;
        Ok(status)
    }
}

struct ClientResult {
    histogram: Histogram<u64>,
    ok: u64,
    errors: u64,
}

async fn client(
    args_addr: String,
    head: Vec<u8>,
    id: usize,
    warmup_until: Instant,
    until: Instant,
) -> ClientResult {
    let mut result = ClientResult {
        histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        ok: 0,
        errors: 0,
    };
    let Ok(mut conn) = Conn::connect(&args_addr).await else {
        result.errors += 1;
        return result;
    };
    let text = "x".repeat(140);
    let mut i = 0u64;
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let body = format!(r#"{{"user":"client-{id:04}","n":{i},"text":"{text}"}}"#);
        let mut full_head = head.clone();
        full_head.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        let start = Instant::now();
        match conn.request(&full_head, body.as_bytes()).await {
            Ok(201) => {
                if start >= warmup_until {
                    result.ok += 1;
                    let micros = start.elapsed().as_micros() as u64;
                    let _ = result.histogram.record(micros.max(1));
                }
            }
            Ok(_) => result.errors += 1,
            Err(_) => {
                result.errors += 1;
                match Conn::connect(&args_addr).await {
                    Ok(c) => conn = c,
                    Err(_) => break,
                }
            }
        }
        i += 1;
    }
    result
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!("| clients | writes/s | p50 (ms) | p99 (ms) | max (ms) | errors | loadgen CPU (% of one core) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &args.clients {
        let head = format!(
            "POST /v1/db/{} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n",
            args.collection, args.addr, args.key
        )
        .into_bytes();
        let cpu_before = cpu_time();
        let start = Instant::now();
        let warmup_until = start + Duration::from_secs(args.warmup);
        let until = warmup_until + Duration::from_secs(args.seconds);
        let results: Vec<ClientResult> = runtime.block_on(async {
            let tasks: Vec<_> = (0..n)
                .map(|id| {
                    tokio::spawn(client(
                        args.addr.clone(),
                        head.clone(),
                        id,
                        warmup_until,
                        until,
                    ))
                })
                .collect();
            let mut out = vec![];
            for t in tasks {
                if let Ok(r) = t.await {
                    out.push(r);
                }
            }
            out
        });
        let wall = start.elapsed();
        let cpu = cpu_time().saturating_sub(cpu_before);
        let mut hist =
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
        let (mut ok, mut errors) = (0, 0);
        for r in &results {
            let _ = hist.add(&r.histogram);
            ok += r.ok;
            errors += r.errors;
        }
        let rate = ok as f64 / args.seconds as f64;
        println!(
            "| {n} | {rate:.0} | {:.2} | {:.2} | {:.2} | {errors} | {:.0} % |",
            hist.value_at_quantile(0.5) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0,
            hist.max() as f64 / 1000.0,
            cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        );
    }
}
