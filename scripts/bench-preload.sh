#!/usr/bin/env bash
# Preload benchmark (issue 19 item 2): first-read time of a frame sequence on the testkit S3
# server by a fresh mount on a cold cache against one on a cache `studiodrive-csi preload`
# filled, rounds interleaved A B A B. PRELOAD_BENCH_FRAMES (default 200) frames of
# PRELOAD_BENCH_FRAME_BYTES (default 3 MiB), PRELOAD_BENCH_ROUNDS (default 2) rounds. Figures
# go to docs/benchmarks.md ("Preload"). Pass --release for an optimised build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test "$@" -p drive-csi --test preload -- --ignored --nocapture --test-threads 1 bench_
