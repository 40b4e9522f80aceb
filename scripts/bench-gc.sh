#!/usr/bin/env bash
# Block GC benchmarks (issue 17): mark over 1M blocks / 10M block-map rows generated in SQL
# (GC_BENCH_BLOCKS, GC_BENCH_ROWS), and unthrottled sweep deletes per second against the
# testkit S3 server, batch deletes vs one by one (GC_BENCH_OBJECTS per run, A B A B).
# Figures go to docs/benchmarks.md ("Block GC"). Pass --release for an optimised build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test "$@" -p drive --test gc -- --ignored --nocapture --test-threads 1 bench_
