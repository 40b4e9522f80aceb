#!/usr/bin/env bash
# Runs every test of Studio Drive on a fresh Debian machine.
#
# Installs what the tests need when missing (as root: apt packages postgresql, fuse3; Python
# packages for the chart tests; cargo-nextest), then runs the Rust suite with cargo-nextest
# and the Helm chart tests. Tests start their own PostgreSQL, S3 server and FUSE mounts;
# nothing needs to be running beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "==> installing ${need_apt[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "missing Debian packages: ${need_apt[*]} (run: sudo apt-get install ${need_apt[*]})" >&2
        exit 1
    fi
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust 1.95 or newer (https://rustup.rs)" >&2
    exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "==> installing cargo-nextest"
    cargo install cargo-nextest --locked
fi
# The PostgreSQL clusters the Debian package may have started are not used by the tests.

echo "==> building studiodrive-csi (the FUSE and CSI tests run the binary)"
cargo build -p drive-csi --bin studiodrive-csi

echo "==> Rust tests (cargo nextest)"
cargo nextest run --workspace --no-fail-fast --profile ci

if [ -x tests/chart/run.sh ]; then
    echo "==> Helm chart and kustomize tests"
    tests/chart/run.sh
fi
