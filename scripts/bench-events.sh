#!/usr/bin/env bash
# Event delivery benchmark (issue 19): small-file creates through a real mount with no event
# sink, with a dead sink (a webhook nobody answers) and with a live webhook sink, while
# `studiodrive-csi relay` runs; rounds interleaved A B C A B C. EVENTS_BENCH_FILES (default
# 2000) files per round, EVENTS_BENCH_ROUNDS (default 2) rounds. Figures go to
# docs/benchmarks.md ("Event delivery"). Pass --release for an optimised build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test "$@" -p drive-csi --test events -- --ignored --nocapture --test-threads 1 bench_
