//! Gives the heap's free pages back to the operating system after bursts.
//!
//! glibc's allocator keeps what a thread frees in that thread's arena and
//! hands back to the system only the free space at an arena's top. A
//! reconnect storm — hundreds of WebSocket handshakes at once, each with its
//! HTTP buffers — would leave the server resident at the storm's high-water
//! mark for as long as it runs (about 1 MiB per 64 concurrent handshakes,
//! measured: see benches/RESULTS.md). So a background task watches the
//! gateway's churn and, once a burst has settled (a tick without change),
//! asks glibc to return every free page (`malloc_trim(0)`, which walks each
//! arena and releases whole free pages wherever they are). The call locks
//! the arenas one after another, so it runs on a blocking thread and only
//! after churn, never on a timer alone.
//!
//! This is the workspace's only `unsafe` code: one FFI call whose only
//! argument is the constant 0.

use std::time::{Duration, Instant};

/// How often churn is sampled; a burst counts as settled after one quiet tick.
const TICK: Duration = Duration::from_millis(250);
/// After a trim that took `t`, the next waits at least `t` × this: the
/// allocator's arenas are locked for at most ~1 % of the time, however
/// steady the churn.
const BACKOFF_FACTOR: u32 = 100;

/// When to trim: once after each burst of churn has settled, and not more
/// often than the backoff allows.
#[derive(Debug)]
struct Schedule {
    last: (u64, usize),
    settled: bool,
    not_before: Instant,
}

impl Schedule {
    fn new(counts: (u64, usize), now: Instant) -> Schedule {
        Schedule {
            last: counts,
            settled: true,
            not_before: now,
        }
    }

    /// Called every tick with the gateway's counts; whether to trim now.
    fn due(&mut self, counts: (u64, usize), now: Instant) -> bool {
        if counts != self.last {
            self.last = counts;
            self.settled = false;
            return false;
        }
        if self.settled || now < self.not_before {
            return false;
        }
        self.settled = true;
        true
    }

    fn trimmed(&mut self, finished: Instant, took: Duration) {
        self.not_before = finished + took * BACKOFF_FACTOR;
    }
}

/// Starts the trimmer on the current runtime (it ends with the runtime).
pub(crate) fn spawn_trimmer(gateway: hearth_gateway::Gateway) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut schedule = Schedule::new(gateway.connection_counts(), Instant::now());
        loop {
            tick.tick().await;
            let counts = gateway.connection_counts();
            if !schedule.due(counts, Instant::now()) {
                continue;
            }
            let started = Instant::now();
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            let took = started.elapsed();
            schedule.trimmed(Instant::now(), took);
            tracing::debug!(
                released,
                connections = counts.1,
                took_us = took.as_micros() as u64,
                "returned free heap pages after connection churn"
            );
        }
    });
}

/// Returns free heap pages to the system; whether any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn trim() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and has no precondition; glibc
    // serializes it with every other allocation through the arena locks.
    unsafe { libc::malloc_trim(0) != 0 }
}

/// Other allocators (musl, macOS, Windows) keep no such pages.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn trim() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Resident set of this process, in KiB.
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn trimming_returns_free_pages_from_the_middle_of_an_arena() {
        // On a thread of its own (its own arena): 64 MiB in 16 KiB blocks,
        // every 16th kept, so the freed ones sit between live ones where
        // the allocator's own trimming (top of the heap only) cannot reach.
        let measured = std::thread::spawn(|| {
            let blocks: Vec<Vec<u8>> = (0..4096)
                .map(|i| vec![(i % 251) as u8; 16 * 1024])
                .collect();
            let kept: Vec<Vec<u8>> = blocks
                .into_iter()
                .enumerate()
                .filter_map(|(i, b)| (i % 16 == 0).then_some(b))
                .collect();
            let before = rss_kib();
            trim();
            let after = rss_kib();
            assert_eq!(kept.len(), 256);
            assert!(kept.iter().all(|b| b.len() == 16 * 1024));
            (before, after)
        })
        .join();
        let Ok((before, after)) = measured else {
            panic!("the allocating thread failed");
        };
        assert!(
            before.saturating_sub(after) > 32 * 1024,
            "RSS {before} KiB -> {after} KiB: trimming should return most of the 60 MiB freed"
        );
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn a_trim_follows_each_settled_burst_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new((1, 0), t0);
        assert!(!s.due((1, 0), t0), "no churn, nothing to trim");
        assert!(!s.due((50, 40), t0), "churn in progress");
        assert!(s.due((50, 40), t0), "a quiet tick after churn");
        assert!(!s.due((50, 40), t0), "once per burst");
    }

    #[test]
    fn steady_churn_is_trimmed_no_more_often_than_the_backoff_allows() {
        let t0 = Instant::now();
        let mut s = Schedule::new((1, 0), t0);
        assert!(!s.due((2, 1), t0));
        assert!(s.due((2, 1), t0));
        // That trim took 5 ms: the next may come 500 ms after it.
        s.trimmed(t0, Duration::from_millis(5));
        let soon = t0 + Duration::from_millis(250);
        assert!(!s.due((3, 2), soon));
        assert!(!s.due((3, 2), soon), "settled, but within the backoff");
        let later = t0 + Duration::from_millis(500);
        assert!(
            s.due((3, 2), later),
            "the burst is still untrimmed: trimmed once allowed"
        );
    }
}
