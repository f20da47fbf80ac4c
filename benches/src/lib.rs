//! Benchmarks only: see `benches/` and `RESULTS.md`.
