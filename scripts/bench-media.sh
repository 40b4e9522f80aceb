#!/usr/bin/env bash
# Media metadata benchmark (issue 20): drive/examples/media_bench.rs, which starts its own
# PostgreSQL (testkit) and measures, each in MEDIA_BENCH_ROUNDS (default 2) rounds:
#   - put_media_document of ~10 KB documents with 1, 4 and 16 writers, against plain INSERTs of
#     the same JSON into a one-JSONB-column table (put, plain, put, plain);
#   - filter queries (equality, range, in, and, or, not) over a store bulk-loaded with
#     MEDIA_BENCH_DOCS documents, p50/p99/max and hits, with one plan of each;
#   - a 200 MB document (MEDIA_BENCH_TIMELINE_BYTES) written through DocumentStore, its text
#     as blocks in a file store, and time-range and area queries inside it against reading the
#     whole document (MEDIA_BENCH_TIMELINE_ONLY=1 runs only this);
#   - PostgreSQL CPU per operation and the database's size after loading.
# Figures go to docs/benchmarks.md ("Media metadata (issue 20)"). Pass --release for an
# optimised build. Knobs (defaults): MEDIA_BENCH_DOCS (1000000), MEDIA_BENCH_LOAD_SECS (600:
# loading stops there and the figures are for the documents loaded), MEDIA_BENCH_LOADERS (3),
# MEDIA_BENCH_BATCH (500), MEDIA_BENCH_WRITE_SECS (10), MEDIA_BENCH_QUERIES (200),
# MEDIA_BENCH_TIMELINE_QUERIES (200), MEDIA_BENCH_SHAPE_SECS (60: a query shape stops there
# with fewer runs, the table says how many), MEDIA_BENCH_ROUNDS (2). A quick check:
#
#     MEDIA_BENCH_DOCS=20000 MEDIA_BENCH_WRITE_SECS=3 MEDIA_BENCH_QUERIES=20 \
#         MEDIA_BENCH_TIMELINE_QUERIES=20 MEDIA_BENCH_TIMELINE_BYTES=20000000 scripts/bench-media.sh
set -euo pipefail
cd "$(dirname "$0")/.."
echo "media_bench: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- drive testkit || echo " + uncommitted changes")" >&2
cargo run "$@" -p drive --example media_bench
