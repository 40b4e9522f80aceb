#!/usr/bin/env bash
# Runs every test of Studio Drive on a fresh Debian machine.
#
# Installs what the tests need when missing (as root: apt packages postgresql, fuse3, acl, nats-server,
# openimageio-tools, ffmpeg;
# cargo-nextest), then runs the Rust suite with cargo-nextest and the chart, Argo CD and
# alert-rule suites (scripts/test-{chart,argocd,alerts}.sh). Tests start their own
# PostgreSQL, S3 server and FUSE mounts; nothing needs to be running beforehand.
#
# No test skips itself: a test that cannot run fails. Tiers this machine cannot run (FUSE
# without root or /dev/fuse; tests that mount a tmpfs without root) are left out here, each
# named with its reason, and with STUDIODRIVE_REQUIRE_ALL_TIERS=1 (set by .ci/run: CI runs
# as root with /dev/fuse) leaving any of them out is an error. The csi-sanity tier runs when
# ../shared/tools/csi-sanity (or $CSI_SANITY) is there and is reported as skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
# The embedded PostgreSQL run as root lets only the postgres user through its 0700 state dir.
command -v setfacl >/dev/null 2>&1 || need_apt+=(acl)
# The event-delivery tests start a real NATS server with JetStream.
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
# The technical-metadata tests write and read back OpenEXR/DPX (oiiotool) and MP4/QuickTime (ffmpeg, ffprobe).
command -v oiiotool >/dev/null 2>&1 || need_apt+=(openimageio-tools)
command -v ffprobe >/dev/null 2>&1 || need_apt+=(ffmpeg)
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

# Tiers and the nextest filter that selects them. The FUSE tier is every integration test of
# drive-csi (each mounts; cargo builds the binary they run before them).
fuse_tier='package(drive-csi) & kind(test)'
root_tier='test(/^as_root_/)'
sanity_tier='binary(csi_sanity) & test(/^csi_sanity_passes/)'

left_out=()
reasons=()
optional_left_out=0
# The CSI conformance suite is a prebuilt binary beside the repository; without it the tier is
# reported as skipped (also in CI: it is not part of this repository).
export CSI_SANITY="${CSI_SANITY:-$(cd .. && pwd)/shared/tools/csi-sanity}"
if [ ! -x "$CSI_SANITY" ]; then
    left_out+=("$sanity_tier")
    reasons+=("csi-sanity tier ($sanity_tier): $CSI_SANITY not found (set CSI_SANITY)")
    optional_left_out=1
fi
fuse_ok=1
[ "$(id -u)" -eq 0 ] || fuse_ok=0
{ [ -c /dev/fuse ] && : </dev/fuse; } 2>/dev/null || fuse_ok=0
if [ $fuse_ok -eq 0 ]; then
    left_out+=("$fuse_tier")
    reasons+=("FUSE and CSI tier ($fuse_tier): needs root and a usable /dev/fuse")
fi
if [ "$(id -u)" -ne 0 ]; then
    left_out+=("$root_tier")
    reasons+=("root-only tests ($root_tier): mount a tmpfs, need root")
fi

filter='all()'
left_out_filter=''
if [ ${#left_out[@]} -gt 0 ]; then
    joined=$(printf ' | (%s)' "${left_out[@]}")
    left_out_filter="${joined:3}"
    filter="all() - ($left_out_filter)"
    for r in "${reasons[@]}"; do echo "==> SKIPPED: $r" >&2; done
    if [ "${STUDIODRIVE_REQUIRE_ALL_TIERS:-0}" = 1 ] && [ ${#left_out[@]} -gt $optional_left_out ]; then
        echo "STUDIODRIVE_REQUIRE_ALL_TIERS=1: every tier must run here" >&2
        exit 1
    fi
fi

echo "==> Rust tests (cargo nextest, filter: $filter)"
status=0
cargo nextest run --workspace --no-fail-fast --profile ci -E "$filter" || status=$?

# The install artefacts: the Helm chart and kustomize output (Helm SDK, Kubernetes schemas,
# checkov), the Argo CD health checks (Lua) and the alert rules and dashboard queries
# (promtool). Each installs its own tools from PyPI or Debian. The kind e2e suite runs where
# kind, helm and a container engine exist and says it skipped otherwise.
for suite in scripts/test-chart.sh scripts/test-argocd.sh scripts/test-alerts.sh e2e/run.sh; do
    echo "==> $suite"
    "$suite" || { echo "==> FAILED: $suite" >&2; status=1; }
done

if [ ${#left_out[@]} -gt 0 ]; then
    echo "==> tests not run on this machine (reasons above):" >&2
    cargo nextest list --workspace -E "$left_out_filter" 2>/dev/null | sed 's/^/    /' >&2
fi
exit $status
