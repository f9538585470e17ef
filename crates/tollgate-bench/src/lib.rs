//! The benchmark suite of tollgate (`bench/run.sh` runs it and writes `BENCHMARKS.md`):
//! the HTTP servers the load generator measures (`bench-server`) and memory per live key
//! (`bench-memory`). Not published.
