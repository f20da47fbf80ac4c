//! `write_floor`: what one small write per connection costs this machine's
//! kernel, with no server in the way.
//!
//! The realtime targets (issue 4 item 7) bound how long the gateway may take
//! to deliver one commit to N subscribers: one `write` system call per
//! connection. This program measures the floor under that: it accepts N
//! loopback TCP connections (`TCP_NODELAY`, as the gateway sets), and then,
//! every `--interval-ms`, writes `--size` bytes to each of them in a plain
//! loop, timing the sweep. A reader process (this binary again, `read`
//! mode, started under `taskset -c <reader-cpu>`) drains the connections on
//! the other core, like the load generator does. Nothing else happens: no
//! framing, no queues, no locks. Run it on the server's core:
//!
//! ```text
//! taskset -c 0 write_floor --conns 10000 --size 200
//! ```
//!
//! It prints µs per write (median and 90th percentile over the sweeps) and
//! ms per sweep, and ends with one `RESULT {json}` line.

use std::io::{IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "write_floor",
    about = "Kernel cost of one small write per loopback connection"
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Connections.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Bytes per write (a change frame to one subscriber is ~150-300).
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Split each write into this many pieces, sent with one vectored
    /// write (the gateway sends a frame as header + shared payload: two
    /// pieces per frame, several frames per write under load).
    #[arg(long, default_value_t = 1)]
    pieces: usize,
    /// Sweeps to time.
    #[arg(long, default_value_t = 100)]
    sweeps: usize,
    /// Pause between sweeps (the fan-out benchmark writes every 20 ms).
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// CPU the reader process is pinned to (with `taskset`).
    #[arg(long, default_value_t = 1)]
    reader_cpu: usize,
    /// Copy the pieces into one buffer and write it with `send(2)` instead
    /// of `writev(2)` (what `write` and `write_vectored` on a socket map to).
    #[arg(long)]
    copy_and_send: bool,
    /// Keep the reader's runtime from parking (it polls its sockets
    /// without sleeping), as a client on another machine would cost the
    /// writer's core nothing to wake.
    #[arg(long)]
    reader_spin: bool,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Internal: connect `conns` times to `addr` and read until every
    /// connection is closed (at most `max_secs`).
    Read {
        addr: SocketAddr,
        conns: usize,
        #[arg(long, default_value_t = 600)]
        max_secs: u64,
        #[arg(long)]
        spin: bool,
    },
}

fn main() -> Result<(), String> {
    let cli = Cli::parse();
    match cli.mode {
        Some(Mode::Read {
            addr,
            conns,
            max_secs,
            spin,
        }) => read(addr, conns, max_secs, spin),
        None => write(&cli),
    }
}

/// The reader: one Tokio task per connection, on a current-thread runtime.
fn read(addr: SocketAddr, conns: usize, max_secs: u64, spin: bool) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        use tokio::io::AsyncReadExt;
        let mut tasks = Vec::with_capacity(conns);
        for _ in 0..conns {
            let mut s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            }));
        }
        if spin {
            tokio::spawn(async {
                loop {
                    tokio::task::yield_now().await;
                }
            });
        }
        let all = futures_util::future::join_all(tasks);
        let _ = tokio::time::timeout(Duration::from_secs(max_secs), all).await;
        Ok(())
    })
}

fn write(cli: &Cli) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut reader = Command::new("taskset")
        .arg("-c")
        .arg(cli.reader_cpu.to_string())
        .arg(&exe)
        .arg("read")
        .arg(addr.to_string())
        .arg(cli.conns.to_string())
        .args(cli.reader_spin.then_some("--spin"))
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the reader with taskset: {e}"))?;
    let mut conns = Vec::with_capacity(cli.conns);
    for _ in 0..cli.conns {
        let (s, _) = listener.accept().map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let payload = vec![b'x'; cli.size];
    let pieces = cli.pieces.clamp(1, cli.size.max(1));
    let step = cli.size.div_ceil(pieces).max(1);
    let slices: Vec<IoSlice<'_>> = payload.chunks(step).map(IoSlice::new).collect();
    let mut us_per_write = Vec::with_capacity(cli.sweeps);
    let mut short = 0u64;
    for _ in 0..cli.sweeps {
        let start = Instant::now();
        for s in conns.iter_mut() {
            let written = if cli.copy_and_send {
                let mut buffer = Vec::with_capacity(payload.len());
                for slice in &slices {
                    buffer.extend_from_slice(slice);
                }
                s.write(&buffer)
            } else {
                s.write_vectored(&slices)
            };
            match written {
                Ok(n) if n == payload.len() => {}
                _ => short += 1,
            }
        }
        us_per_write.push(start.elapsed().as_secs_f64() * 1e6 / cli.conns.max(1) as f64);
        std::thread::sleep(Duration::from_millis(cli.interval_ms));
    }
    let _ = drain_and_close(conns);
    let _ = reader.wait();
    us_per_write.sort_by(f64::total_cmp);
    let at = |q: f64| us_per_write[((us_per_write.len() - 1) as f64 * q) as usize];
    let (p50, p90) = (at(0.5), at(0.9));
    eprintln!(
        "{} connections, {} B per write in {} pieces: {p50:.2} µs per write (p90 {p90:.2}), a sweep {:.1} ms",
        cli.conns,
        cli.size,
        slices.len(),
        p50 * cli.conns as f64 / 1000.0
    );
    println!(
        "RESULT {}",
        json!({
            "conns": cli.conns, "size": cli.size, "pieces": slices.len(), "sweeps": cli.sweeps,
            "us_per_write_p50": (p50 * 100.0).round() / 100.0,
            "us_per_write_p90": (p90 * 100.0).round() / 100.0,
            "sweep_ms_p50": (p50 * cli.conns as f64 / 10.0).round() / 100.0,
            "short_writes": short,
        })
    );
    Ok(())
}

/// Closes every connection (the reader then ends).
fn drain_and_close(conns: Vec<TcpStream>) -> std::io::Result<()> {
    let mut scratch = [0u8; 64];
    for mut s in conns {
        // Nothing is expected from the reader; ignore whatever is there.
        let _ = s.read(&mut scratch);
        s.shutdown(std::net::Shutdown::Both)?;
    }
    Ok(())
}
