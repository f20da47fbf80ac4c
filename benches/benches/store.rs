//! In-process store benchmarks (criterion).
//!
//! * `point_get`: `Store::get` of an existing document (100k-document store).
//! * `durable_write`: one `commit` of one ~200-byte document in strict mode (fsync per commit).
//! * `group_commit_64`: 64 concurrent writers each committing one document; throughput in commits/s.
//! * `query_eq_20/{10k,100k,1M}`: `cat == k limit 20` served by the automatic single-field index.
//! * `query_range_20/{10k,100k,1M}`: `score >= n/2 order by score limit 20`.
//!
//! Datasets are built with relaxed durability and 500-write commits. After the
//! criterion runs, each query and the point get are also timed one by one
//! (20,000 samples) and the p50/p99 printed, since criterion reports means and medians.
//!
//! Run: `cargo bench -p hearth-benches --bench store`
//! (set `HEARTH_BENCH_MAX_DOCS=100000` to skip the 1M dataset).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hearth_protocol::{CollectionPath, Direction, DocPath, Map, Op, Query, Value, Write};
use hearth_store::{Durability, Store, StoreConfig};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A ~200-byte document.
fn doc_fields(i: u64) -> Map {
    let mut m = Map::new();
    m.insert("cat".into(), Value::Integer((i % 500) as i64));
    m.insert("score".into(), Value::Integer(i as i64));
    m.insert(
        "title".into(),
        Value::String(format!("document number {i} of the benchmark set")),
    );
    m.insert("body".into(), Value::String("x".repeat(120)));
    m
}

fn items() -> CollectionPath {
    CollectionPath::parse("items").expect("path")
}

fn doc_path(i: u64) -> DocPath {
    items().doc(&format!("d{i:08}")).expect("path")
}

fn build_dataset(rt: &tokio::runtime::Runtime, dir: &std::path::Path, n: u64) -> Store {
    let mut config = StoreConfig::new(dir);
    config.durability = Durability::Relaxed {
        flush_interval: Duration::from_millis(500),
    };
    config.retention.max_commits = Some(1000);
    config.cache_capacity_bytes = 1 << 30;
    let store = Store::open(config).expect("open");
    let started = Instant::now();
    rt.block_on(async {
        let chunks: Vec<u64> = (0..n).step_by(500).collect();
        let store2 = store.clone();
        let mut pending = Vec::new();
        for start in chunks {
            let s = store2.clone();
            pending.push(tokio::spawn(async move {
                let writes: Vec<Write> = (start..(start + 500).min(n))
                    .map(|i| Write::set(doc_path(i), doc_fields(i)))
                    .collect();
                s.commit(writes).await.expect("commit");
            }));
            if pending.len() >= 8 {
                pending.remove(0).await.expect("task");
            }
        }
        for p in pending {
            p.await.expect("task");
        }
    });
    eprintln!("built {n} documents in {:.1?}", started.elapsed());
    store
}

fn percentiles(label: &str, mut f: impl FnMut()) {
    let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..2_000 {
        f();
    }
    for _ in 0..20_000 {
        let t = Instant::now();
        f();
        h.record(t.elapsed().as_nanos() as u64).expect("record");
    }
    println!(
        "PERCENTILES {label}: p50 {:.2} µs, p99 {:.2} µs, max {:.2} µs (n = 20000)",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

fn eq_query(k: i64) -> Query {
    Query::collection(items())
        .filter("cat", Op::Eq, k)
        .limit(20)
}

fn range_query(n: u64) -> Query {
    Query::collection(items())
        .filter("score", Op::Ge, (n / 2) as i64)
        .order("score", Direction::Asc)
        .limit(20)
}

fn bench_store(c: &mut Criterion) {
    let rt = runtime();
    let max_docs: u64 = std::env::var("HEARTH_BENCH_MAX_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);

    // Writes.
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig::new(dir.path())).expect("open");
        let mut i = 0u64;
        let mut g = c.benchmark_group("write");
        g.sample_size(30).measurement_time(Duration::from_secs(5));
        g.bench_function("durable_write", |b| {
            b.iter(|| {
                i += 1;
                rt.block_on(store.commit(vec![Write::set(doc_path(i), doc_fields(i))]))
                    .expect("commit");
            })
        });
        g.throughput(Throughput::Elements(64));
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(10_000_000));
        g.bench_function("group_commit_64", |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    rt.block_on(async {
                        let mut tasks = Vec::with_capacity(64);
                        for _ in 0..64 {
                            let s = store.clone();
                            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tasks.push(tokio::spawn(async move {
                                s.commit(vec![Write::set(doc_path(n), doc_fields(n))])
                                    .await
                                    .expect("commit")
                            }));
                        }
                        for t in tasks {
                            t.await.expect("task");
                        }
                    });
                }
                started.elapsed()
            })
        });
        g.finish();
    }

    // Reads over growing datasets.
    let sizes: Vec<(u64, &str)> = [(10_000, "10k"), (100_000, "100k"), (1_000_000, "1M")]
        .into_iter()
        .filter(|(n, _)| *n <= max_docs)
        .collect();
    for (n, label) in sizes {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = build_dataset(&rt, dir.path(), n);
        // Sanity: both queries return 20 documents.
        assert_eq!(
            store.query(&eq_query(7)).expect("query").documents.len(),
            20
        );
        assert_eq!(
            store.query(&range_query(n)).expect("query").documents.len(),
            20
        );
        let mut g = c.benchmark_group("read");
        g.sample_size(50).measurement_time(Duration::from_secs(3));
        let mut k = 0i64;
        g.bench_with_input(BenchmarkId::new("query_eq_20", label), &n, |b, _| {
            b.iter(|| {
                k = (k + 1) % 500;
                store.query(&eq_query(k)).expect("query")
            })
        });
        let rq = range_query(n);
        g.bench_with_input(BenchmarkId::new("query_range_20", label), &n, |b, _| {
            b.iter(|| store.query(&rq).expect("query"))
        });
        let mut i = 0u64;
        g.bench_with_input(BenchmarkId::new("point_get", label), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % n;
                store.get(&doc_path(i)).expect("get")
            })
        });
        g.finish();
        let mut k = 0i64;
        percentiles(&format!("query_eq_20/{label}"), || {
            k = (k + 1) % 500;
            let r = store.query(&eq_query(k)).expect("query");
            assert_eq!(r.documents.len(), 20);
        });
        percentiles(&format!("query_range_20/{label}"), || {
            store.query(&rq).expect("query");
        });
        let paths: Vec<DocPath> = (0..1000).map(|j| doc_path((j * 7919) % n)).collect();
        let mut j = 0usize;
        percentiles(&format!("point_get/{label}"), || {
            j = (j + 1) % paths.len();
            store.get(&paths[j]).expect("get");
        });
        let _ = BTreeMap::<u8, u8>::new();
        drop(store);
    }
}

criterion_group!(benches, bench_store);
criterion_main!(benches);
