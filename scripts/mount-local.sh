#!/usr/bin/env bash
# The main job on a fresh Debian machine, in one command: installs fuse3 and postgresql (and
# acl, as root) when missing (apt-get, as root), builds studiodrive-csi (release) and mounts
# the workspace "default" on embedded defaults: an embedded PostgreSQL, blocks and cache
# under the state directory (default ~/.local/share/studiodrive, or
# $XDG_DATA_HOME/studiodrive).
#
#     scripts/mount-local.sh [MOUNTPOINT] [-- extra mount flags]
#
# MOUNTPOINT defaults to ./mnt-studiodrive. The mount runs in the background once it is live
# (log: <state-dir>/mount.log); unmount with `fusermount3 -u MOUNTPOINT`. Flags after `--` go
# to `studiodrive-csi mount` (see docs/quickstart-mount.md), e.g. `-- --foreground`.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

MOUNTPOINT=./mnt-studiodrive
if [ $# -gt 0 ] && [ "$1" != "--" ]; then MOUNTPOINT=$1; shift; fi
[ "${1:-}" = "--" ] && shift

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
[ "$(id -u)" -ne 0 ] || command -v setfacl >/dev/null 2>&1 || need+=(acl)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need+=(postgresql)
if ! command -v cargo >/dev/null 2>&1 && ! [ -x "$HOME/.cargo/bin/cargo" ]; then
    command -v cc >/dev/null 2>&1 || need+=(build-essential)
    command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
fi
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "mount-local: missing Debian packages: ${need[*]}" >&2
        echo "  run as root, or first: sudo apt-get install -y ${need[*]}" >&2
        exit 1
    fi
    echo "==> apt-get install ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -e /dev/fuse ]; then
    echo "mount-local: /dev/fuse is missing (load the fuse module, or give the container --device /dev/fuse)" >&2
    exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
    if [ ! -x "$HOME/.cargo/bin/cargo" ]; then
        echo "==> installing Rust with rustup" >&2
        curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >&2
    fi
    export PATH="$HOME/.cargo/bin:$PATH"
fi

echo "==> cargo build --release -p drive-csi" >&2
(cd "$REPO" && cargo build --release -p drive-csi --bin studiodrive-csi)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET_DIR/release/studiodrive-csi

mkdir -p "$MOUNTPOINT"
echo "==> $BIN mount $* $MOUNTPOINT" >&2
"$BIN" mount "$@" "$MOUNTPOINT"
case " $* " in
*" --foreground "*) ;;
*) echo "mounted on $MOUNTPOINT (workspace default); unmount with: fusermount3 -u $MOUNTPOINT" >&2 ;;
esac
