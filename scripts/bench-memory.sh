#!/usr/bin/env bash
# Mount memory benchmark: the peak resident memory (VmHWM) of a Studio Drive mount on embedded
# defaults under three loads, printed against the mount's memory bound (512 MiB by default):
#   listing  - a folder of LS_ENTRIES entries listed through 4 concurrent directory handles
#   open     - OPEN_FILES files of 4 MiB held open at once and read round-robin
#   mixed    - 8 readers of 8 different 128 MiB files (cold) while 2 writers write 256 MiB each
# The peak is reset (clear_refs) before each load, so each row is that load's own peak.
#
# Run as root on Debian (installs fuse3, python3 and postgresql when missing):
#
#     scripts/bench-memory.sh                      # 1,000,000 entries, 200 open files
#     LS_ENTRIES=100000 scripts/bench-memory.sh    # quicker
#
# Environment: LS_ENTRIES [1000000], OPEN_FILES [200], BOUND_MIB [512],
#   WORK [/var/tmp/studiodrive-bench-memory] scratch dir (emptied first), MOUNT_ARGS extra
#   arguments for `studiodrive-csi mount` (to measure other settings), SD_BIN a prebuilt
#   studiodrive-csi to measure instead of building this checkout's (A/B runs).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

LS_ENTRIES=${LS_ENTRIES:-1000000}
OPEN_FILES=${OPEN_FILES:-200}
BOUND_MIB=${BOUND_MIB:-512}
WORK=${WORK:-/var/tmp/studiodrive-bench-memory}
MOUNT_ARGS=${MOUNT_ARGS:-}
SD_BIN=${SD_BIN:-}

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
[ "$(id -u)" -eq 0 ] || die "run as root (mounts, drop_caches, apt-get)"
install_missing python3:python3 fusermount3:fuse3 initdb:postgresql

if [ -z "$SD_BIN" ]; then
    say "cargo build --release -p drive-csi"
    cargo build --release -p drive-csi --bin studiodrive-csi
    SD_BIN=$(target_dir)/release/studiodrive-csi
fi

MNT=$WORK/mnt
STATE=$WORK/state
cleanup() {
    set +e
    mountpoint -q "$MNT" 2>/dev/null && { fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT"; }
    local pgdata=$STATE/postgres/data
    [ -f "$pgdata/postmaster.pid" ] &&
        su postgres -s /bin/sh -c "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/pg_ctl stop -m fast -D '$pgdata'" >/dev/null 2>&1
    rm -rf "$STATE" "$WORK"/random?
}
if [ -d "$WORK" ]; then cleanup; rm -rf "$WORK"; fi
trap cleanup EXIT
mkdir -p "$MNT" "$WORK/bin"
# A private copy: the shared target dir may be rebuilt during the run.
cp "$SD_BIN" "$WORK/bin/studiodrive-csi"
SD=$WORK/bin/studiodrive-csi
if [ "$SD_BIN" = "$(target_dir)/release/studiodrive-csi" ]; then
    echo "studiodrive-csi: $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- drive csi-driver || echo ' + uncommitted changes')" >&2
else
    echo "studiodrive-csi: $SD_BIN" >&2
fi

mount_pid() { pgrep -f "studiodrive-csi mount .*$MNT( |$)" | head -1; }
start() {
    # shellcheck disable=SC2086
    "$SD" mount --state-dir "$STATE" $MOUNT_ARGS "$MNT" >/dev/null
    for _ in $(seq 300); do mountpoint -q "$MNT" && return 0; sleep 0.1; done
    die "the mount did not come up"
}
stop() {
    fusermount3 -u "$MNT"
    for _ in $(seq 600); do [ -z "$(mount_pid)" ] && return 0; sleep 0.1; done
    die "the mount did not exit after unmount"
}
cold() { stop; sync; echo 3 >/proc/sys/vm/drop_caches; rm -rf "$STATE/cache"; start; }
reset_peak() { echo 5 >"/proc/$(mount_pid)/clear_refs"; }
peak_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$(mount_pid)/status"; }

ROWS=()
record() { # load peak_kib
    local mib
    mib=$(python3 -c "print(f'{$2/1024:.0f}')")
    ROWS+=("| $1 | $mib | $BOUND_MIB | $(python3 -c "print(f'{$2/1024/$BOUND_MIB:.2f}')") |")
    echo "    $1: peak RSS $mib MiB (bound $BOUND_MIB MiB)" >&2
}

start
say "populating: $LS_ENTRIES entries, $OPEN_FILES files of 4 MiB, 8 files of 128 MiB"
# Writer sources on the local disk; every file has its own random content (nothing dedups).
for w in 0 1; do head -c $((256 << 20)) /dev/urandom >"$WORK/random$w"; done
python3 - "$MNT" "$LS_ENTRIES" "$OPEN_FILES" <<'EOF'
import os, sys
mnt, entries, open_files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
big = os.path.join(mnt, "frames")
os.mkdir(big)
for i in range(entries):
    os.close(os.open(os.path.join(big, f"f.{i:07d}.exr"), os.O_CREAT | os.O_WRONLY, 0o644))
os.mkdir(os.path.join(mnt, "small"))
for i in range(open_files):
    with open(os.path.join(mnt, "small", f"s{i:03d}"), "wb") as f:
        f.write(os.urandom(4 << 20))
os.mkdir(os.path.join(mnt, "big"))
for i in range(8):
    with open(os.path.join(mnt, "big", f"b{i}"), "wb") as f:
        for _ in range(16):
            f.write(os.urandom(8 << 20))
EOF

say "listing: 4 handles over $LS_ENTRIES entries"
cold
reset_peak
python3 - "$MNT/frames" "$LS_ENTRIES" <<'EOF'
import os, sys, threading
path, want = sys.argv[1], int(sys.argv[2])
counts = [0] * 4
def walk(k):
    with os.scandir(path) as it:
        for _ in it:
            counts[k] += 1
threads = [threading.Thread(target=walk, args=(k,)) for k in range(4)]
for t in threads: t.start()
for t in threads: t.join()
assert counts == [want] * 4, f"listed {counts}, want {want} each"
EOF
record "list $LS_ENTRIES entries, 4 handles" "$(peak_kib)"

say "open: $OPEN_FILES files open at once"
cold
reset_peak
python3 - "$MNT/small" "$OPEN_FILES" <<'EOF'
import os, sys
path, n = sys.argv[1], int(sys.argv[2])
fds = [os.open(os.path.join(path, f"s{i:03d}"), os.O_RDONLY) for i in range(n)]
total = 0
for _ in range(4):
    for fd in fds:
        total += len(os.read(fd, 1 << 20))
for fd in fds: os.close(fd)
assert total == n * (4 << 20), total
EOF
record "$OPEN_FILES open files read round-robin" "$(peak_kib)"

say "mixed: 8 cold readers of 128 MiB, 2 writers of 256 MiB"
cold
reset_peak
pids=()
for i in $(seq 0 7); do dd if="$MNT/big/b$i" of=/dev/null bs=1M status=none & pids+=($!); done
for w in 0 1; do dd if="$WORK/random$w" of="$MNT/big/w$w" bs=1M status=none conv=fsync & pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || die "a reader or writer failed"; done
[ "$(stat -c %s "$MNT/big/w1")" -eq $((256 << 20)) ] || die "the writers did not write 256 MiB"
record "8 readers x 128 MiB + 2 writers x 256 MiB" "$(peak_kib)"

echo
echo "| load | peak RSS MiB | bound MiB | peak / bound |"
echo "|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
