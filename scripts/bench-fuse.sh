#!/usr/bin/env bash
# FUSE mount benchmark: Studio Drive side by side with a FUSE passthrough baseline (bindfs),
# local disk, and (when an S3 server is available) rclone mount and s3fs on the same S3 server
# plus Studio Drive on that S3 server. Targets alternate A B A B over ROUNDS rounds in one run;
# the table shows the median of the rounds and the ratio to bindfs (the baseline).
#
# A goals section follows the table: each goal of issue 21 ("Data path at the machine's limits")
# as a ratio of medians of this run, its threshold and whether it is met (see GOALS below).
#
# Run as root on Debian (installs fio, bindfs, rclone, s3fs, fuse3, postgresql when missing):
#
#     scripts/bench-fuse.sh                          # full size: 4 GiB, 2,000 frames, 100k entries
#     SIZE=1G FRAMES=500 LS_ENTRIES=20000 scripts/bench-fuse.sh   # quicker
#
# Environment (defaults in brackets):
#   SIZE [4G]            sequential file size (fio size syntax)
#   RAND_TIME [30]       seconds of random 4 KiB reads
#   SMALL_FILES [10000]  files in the create/stat/unlink workload (4 KiB each)
#   FRAMES [2000]        frame-sequence files, FRAME_SIZE [8M] each, FRAME_WRITERS [4] writers
#   LS_ENTRIES [100000]  entries of the `ls -l` folder
#   ROUNDS [2]           rounds (each round runs every target once)
#   TARGETS              space-separated subset of: local bindfs studiodrive studiodrive-s3 rclone s3fs
#   MIXED_TIME [30]      seconds of the `mixed` workload: MIXED_READERS [8] fio readers, each
#                        reading its own file of SIZE/MIXED_READERS (written first, untimed, then
#                        a cold restart), while MIXED_WRITERS [2] writers write new files of
#                        FRAME_SIZE (fsync at close; each writer cycles over SIZE/2 worth of
#                        files, overwriting them if it gets round). Records the aggregate read and
#                        write MB/s and the mount process's peak RSS (MiB) during the load
#                        (studiodrive*, bindfs, rclone, s3fs). rclone's write rate is to its
#                        VFS cache: the mixed workload does not wait for its uploads.
#   GOAL_RSS_MIB [256]   the peak-RSS goal of the mount under the mixed load
#   SD_BIN []            a studiodrive-csi binary to measure instead of building this tree's
#                        (to compare two builds A B A B)
#   SD_MOUNT_ARGS []     extra options of the studiodrive* mounts (e.g. budgets to compare:
#                        --memory-cache-size 33554432), split on spaces
#   WORKLOADS [seq small frames ls mixed]  space-separated subset of the workloads to run
#   WORK [/var/tmp/studiodrive-bench]  scratch dir on the local disk (emptied first)
#   OUT [$WORK/results.md]             where the table goes (also printed)
#   S3: S3_ENDPOINT (+ S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION [us-east-1]) for an existing
#       server; otherwise the script starts `studiodrive-s3-server` (testkit) when that binary
#       builds. Without either, the S3 targets are skipped with a message. The server must
#       handle folder marker objects ("dir/") and ListObjects as rclone and s3fs use them; the
#       testkit server adds both in front of s3s-fs (testkit/src/s3.rs).
#
# Cold runs: the mount is stopped, the kernel caches are dropped (echo 3 >
# /proc/sys/vm/drop_caches), the mount's node-local cache (Studio Drive's block cache, rclone's
# VFS cache) is emptied, and the mount starts again. Warm runs repeat in the same mount.
# Times are wall-clock and include close()/fsync, i.e. until the data is durable on the target.
#
# CPU: for studiodrive and studiodrive-s3 the seq workload also records the mount process's CPU
# time (utime + stime from /proc/PID/stat) per GB written (seq write, cold) and read (seq read,
# cold), lower is better. It counts the mount process only, not its embedded PostgreSQL.
# Peak RSS (mixed): VmHWM after a reset (echo 5 > /proc/PID/clear_refs) at the start of the
# load, or the highest VmRSS sampled every 0.2 s, whichever is higher; the mount process only.
#
# Goals (issue 21), printed after the table and appended to OUT; "not measured" when a target
# or workload was not run:
#   seq write 1 MiB, cold (durable at close): studiodrive >= 0.5x local; studiodrive-s3 > rclone
#   frames write and cold read: studiodrive-s3 > rclone and > s3fs
#   random read 4 KiB, cold: studiodrive-s3 >= s3fs; studiodrive >= 0.5x bindfs
#   seq read 1 MiB, warm: studiodrive (and studiodrive-s3) >= 1.0x bindfs
#   mixed (8 readers, 2 writers): peak RSS of the studiodrive* mount <= GOAL_RSS_MIB
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

SIZE=${SIZE:-4G}
RAND_TIME=${RAND_TIME:-30}
SD_MOUNT_ARGS=${SD_MOUNT_ARGS:-}
SMALL_FILES=${SMALL_FILES:-10000}
WORKLOADS=${WORKLOADS:-seq small frames ls mixed}
FRAMES=${FRAMES:-2000}
FRAME_SIZE=${FRAME_SIZE:-8M}
FRAME_WRITERS=${FRAME_WRITERS:-4}
LS_ENTRIES=${LS_ENTRIES:-100000}
MIXED_TIME=${MIXED_TIME:-30}
MIXED_READERS=${MIXED_READERS:-8}
MIXED_WRITERS=${MIXED_WRITERS:-2}
GOAL_RSS_MIB=${GOAL_RSS_MIB:-256}
ROUNDS=${ROUNDS:-2}
WORK=${WORK:-/var/tmp/studiodrive-bench}
OUT=${OUT:-$WORK/results.md}
S3_REGION=${S3_REGION:-us-east-1}

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
[ "$(id -u)" -eq 0 ] || die "run as root (mounts, drop_caches, apt-get)"

# ---- packages ---------------------------------------------------------------------------
install_missing fio:fio bindfs:bindfs rclone:rclone s3fs:s3fs python3:python3 fusermount3:fuse3 initdb:postgresql setfacl:acl

# ---- build ------------------------------------------------------------------------------
TARGET_DIR=$(target_dir)
if [ -n "${SD_BIN:-}" ]; then
    [ -x "$SD_BIN" ] || die "SD_BIN=$SD_BIN is not an executable"
    SD=$SD_BIN
else
    say "cargo build --release -p drive-csi"
    cargo build --release -p drive-csi --bin studiodrive-csi
    SD=$TARGET_DIR/release/studiodrive-csi
fi
S3_SERVER_BIN=""
if [ -z "${S3_ENDPOINT:-}" ] && [ -e testkit/src/bin/studiodrive-s3-server.rs ]; then
    say "cargo build --release -p drive-testkit --bin studiodrive-s3-server"
    if cargo build --release -p drive-testkit --bin studiodrive-s3-server; then
        S3_SERVER_BIN=$TARGET_DIR/release/studiodrive-s3-server
    else
        say "the testkit S3 server did not build; S3 targets will be skipped"
    fi
fi

# ---- scratch ----------------------------------------------------------------------------
# The embedded PostgreSQL of a state dir outlives its mounts (it is shared by them).
stop_embedded_pg() {
    local pgdata
    for pgdata in "$WORK"/data/*/postgres/data; do
        [ -f "$pgdata/postmaster.pid" ] || continue
        su postgres -s /bin/sh -c "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/pg_ctl stop -m fast -D '$pgdata'" \
            >/dev/null 2>&1
    done
}
cleanup() {
    set +e
    for m in "$WORK"/mnt/*; do
        mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }
    done
    [ -n "${S3_PID:-}" ] && kill "$S3_PID" 2>/dev/null && wait "$S3_PID" 2>/dev/null
    stop_embedded_pg
    # Keep the results, not the gigabytes of test data.
    rm -rf "$WORK/data" "$WORK/s3"
}
trap cleanup EXIT
if [ -d "$WORK" ]; then
    for m in "$WORK"/mnt/*; do mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" || umount -l "$m"; }; done
    stop_embedded_pg
    rm -rf "$WORK"
fi
mkdir -p "$WORK"/mnt "$WORK"/data "$WORK"/bin
# Run private copies: the shared target dir may be rebuilt by someone else during the run.
cp "$SD" "$WORK/bin/studiodrive-csi" && SD=$WORK/bin/studiodrive-csi
if [ -n "$S3_SERVER_BIN" ]; then cp "$S3_SERVER_BIN" "$WORK/bin/" && S3_SERVER_BIN=$WORK/bin/studiodrive-s3-server; fi
if [ -n "${SD_BIN:-}" ]; then echo "studiodrive-csi: $SD_BIN" >&2; else echo "studiodrive-csi: $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- drive csi-driver || echo ' + uncommitted changes')" >&2; fi

# ---- S3 server --------------------------------------------------------------------------
S3_OK=""
if [ -n "${S3_ENDPOINT:-}" ]; then
    [ -n "${S3_ACCESS_KEY:-}" ] && [ -n "${S3_SECRET_KEY:-}" ] || die "S3_ENDPOINT needs S3_ACCESS_KEY and S3_SECRET_KEY"
    S3_OK=1
elif [ -n "$S3_SERVER_BIN" ]; then
    say "starting the testkit S3 server"
    mkdir -p "$WORK/s3"
    "$S3_SERVER_BIN" --root "$WORK/s3" --addr 127.0.0.1:0 >"$WORK/s3.out" 2>"$WORK/s3.log" &
    S3_PID=$!
    for _ in $(seq 100); do grep -q endpoint= "$WORK/s3.out" 2>/dev/null && break; sleep 0.1; done
    line=$(grep endpoint= "$WORK/s3.out" || true)
    [ -n "$line" ] || die "S3 server did not start: $(cat "$WORK/s3.log")"
    S3_ENDPOINT=$(sed -E 's/.*endpoint=([^ ]+).*/\1/' <<<"$line")
    S3_ACCESS_KEY=$(sed -E 's/.*access_key=([^ ]+).*/\1/' <<<"$line")
    S3_SECRET_KEY=$(sed -E 's/.*secret_key=([^ ]+).*/\1/' <<<"$line")
    S3_OK=1
fi
if [ -n "$S3_OK" ]; then
    # rclone's AWS SDK refuses to start when AWS_CA_BUNDLE is set ("LoadCustomCABundleError:
    # unsupported transport"); a plain-HTTP endpoint needs no CA bundle anyway.
    case $S3_ENDPOINT in http://*) unset AWS_CA_BUNDLE ;; esac
    export RCLONE_CONFIG_BENCHS3_TYPE=s3 RCLONE_CONFIG_BENCHS3_PROVIDER=Other
    export RCLONE_CONFIG_BENCHS3_ENDPOINT=$S3_ENDPOINT RCLONE_CONFIG_BENCHS3_REGION=$S3_REGION
    export RCLONE_CONFIG_BENCHS3_ACCESS_KEY_ID=$S3_ACCESS_KEY RCLONE_CONFIG_BENCHS3_SECRET_ACCESS_KEY=$S3_SECRET_KEY
    export RCLONE_CONFIG_BENCHS3_FORCE_PATH_STYLE=true RCLONE_CONFIG_BENCHS3_LIST_VERSION=2
    for b in bench-sd bench-rclone bench-s3fs; do rclone mkdir "benchs3:$b" || die "cannot create bucket $b at $S3_ENDPOINT"; done
    printf '%s:%s\n' "$S3_ACCESS_KEY" "$S3_SECRET_KEY" >"$WORK/s3fs.passwd"
    chmod 600 "$WORK/s3fs.passwd"
    echo "S3 server: $S3_ENDPOINT" >&2
else
    echo "bench-fuse: no S3 server (set S3_ENDPOINT, or build testkit's studiodrive-s3-server):" \
        "skipping studiodrive-s3, rclone and s3fs" >&2
fi

BENCH_RC=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ALL="local bindfs studiodrive"
[ -n "$S3_OK" ] && ALL="$ALL studiodrive-s3 rclone s3fs"
TARGETS=${TARGETS:-$ALL}
for t in $TARGETS; do
    case " $ALL " in *" $t "*) ;; *) die "target $t is not available (available: $ALL)";; esac
done

# ---- targets: start, stop, where --------------------------------------------------------
dir_of() { if [ "$1" = local ]; then echo "$WORK/data/local"; else echo "$WORK/mnt/$1"; fi; }

wait_mounted() {
    for _ in $(seq 300); do mountpoint -q "$1" && return 0; sleep 0.1; done
    die "$1 did not mount"
}

start() {
    local t=$1 m
    m=$(dir_of "$t")
    mkdir -p "$m"
    case $t in
    local) ;;
    bindfs)
        mkdir -p "$WORK/data/bindfs-src"
        bindfs --multithreaded "$WORK/data/bindfs-src" "$m" ;;
    studiodrive)
        "$SD" mount --state-dir "$WORK/data/sd-state" $SD_MOUNT_ARGS "$m" >/dev/null ;;
    studiodrive-s3)
        AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY AWS_REGION=$S3_REGION \
            "$SD" mount --state-dir "$WORK/data/sd-s3-state" --store s3://bench-sd/vol \
            --s3-endpoint "$S3_ENDPOINT" $SD_MOUNT_ARGS "$m" >/dev/null ;;
    rclone)
        # --vfs-write-back 0s: uploads start at close. rclone acknowledges close before the
        # upload ends (a weaker contract than Studio Drive's and s3fs's), so every timed write
        # job on rclone also waits until its uploads are done (settle). Not --daemon: with it
        # the forked child cannot bind the remote-control port settle asks.
        setsid rclone mount benchs3:bench-rclone "$m" --vfs-cache-mode full --vfs-write-back 0s \
            --cache-dir "$WORK/data/rclone-cache" --log-file "$WORK/rclone.log" \
            --rc --rc-addr "$BENCH_RC" --rc-no-auth </dev/null >/dev/null 2>&1 & ;;
    s3fs)
        s3fs bench-s3fs "$m" -o url="$S3_ENDPOINT" -o use_path_request_style \
            -o passwd_file="$WORK/s3fs.passwd" -o endpoint="$S3_REGION" -o dbglevel=warn ;;
    esac
    [ "$t" = local ] || wait_mounted "$m"
}

stop() {
    local t=$1 m
    m=$(dir_of "$t")
    [ "$t" = local ] && return 0
    # fusermount3 -u returns once the kernel has detached; wait for the server to exit, so the
    # next start finds its state free (Studio Drive commits open files on unmount).
    fusermount3 -u "$m"
    for _ in $(seq 600); do
        case $t in
        studiodrive | studiodrive-s3) pgrep -f "studiodrive-csi mount .*$m( |$)" >/dev/null || return 0 ;;
        rclone) pgrep -f "rclone mount .* $m( |$)" >/dev/null || return 0 ;;
        s3fs) pgrep -f "s3fs bench-s3fs $m( |$)" >/dev/null || return 0 ;;
        bindfs) pgrep -f "bindfs .* $m( |$)" >/dev/null || return 0 ;;
        esac
        sleep 0.1
    done
    die "$t did not exit after unmount"
}

# Cold: stop, drop the kernel caches and the mount's own disk cache, start again.
cold() {
    local t=$1
    stop "$t"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    case $t in
    studiodrive) rm -rf "$WORK/data/sd-state/cache" ;;
    studiodrive-s3) rm -rf "$WORK/data/sd-s3-state/cache" ;;
    rclone) rm -rf "$WORK/data/rclone-cache" ;;
    esac
    start "$t"
}

# rclone: wait until the objects under bench/$1 of the bucket add up to $2 files of $3 bytes in
# all and rclone reports no upload queued or running (part of the timed interval).
settle() {
    [ "$T" = rclone ] || return 0
    local want="{\"count\":$2,\"bytes\":$3," got="" stats
    for _ in $(seq 36000); do
        got=$(rclone size --json "benchs3:bench-rclone/bench/$1" 2>/dev/null | tr -d ' \n' || true)
        case $got in "$want"*) ;; *) sleep 0.1; continue ;; esac
        stats=$(rclone rc --url "http://$BENCH_RC/" vfs/stats 2>/dev/null | tr -d ' \n\t')
        case $stats in *'"uploadsInProgress":0,"uploadsQueued":0'*) return 0 ;; esac
        sleep 0.1
    done
    die "rclone did not finish uploading bench/$1 (want $want, have $got)"
}

# PID of the process serving target $1's mount (empty for local).
mount_pid() {
    local m
    m=$(dir_of "$1")
    case $1 in
    studiodrive | studiodrive-s3) pgrep -nf "studiodrive-csi mount .*$m( |$)" ;;
    rclone) pgrep -nf "rclone mount .* $m( |$)" ;;
    s3fs) pgrep -nf "s3fs bench-s3fs $m( |$)" ;;
    bindfs) pgrep -nf "bindfs .* $m( |$)" ;;
    esac || true
}

CLK_TCK=$(getconf CLK_TCK)
# cpu_mark TARGET: CPU seconds (user + system) of the studiodrive* mount process so far; empty
# for the other targets.
cpu_mark() {
    local pid
    case $1 in studiodrive*) ;; *) return 0 ;; esac
    pid=$(mount_pid "$1")
    [ -n "$pid" ] || die "no mount process for $1"
    # Fields 14 and 15 (utime, stime) of /proc/PID/stat, counted after the ")" closing comm.
    python3 -c "f=open('/proc/$pid/stat').read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[12]))/$CLK_TCK)"
}
# cpu_record TARGET ROUND WORKLOAD START BYTES: records the mount's CPU seconds per GB moved
# since cpu_mark gave START (nothing when START is empty).
cpu_record() {
    [ -n "$4" ] || return 0
    local c
    c=$(cpu_mark "$1")
    record "$1" "$2" "$3" "$(python3 -c "print(round(($c - $4) / ($5 / 1e9), 2))")" lo
}

# rss_sampler PID FILE: writes the highest VmRSS (KiB) of PID seen every 0.2 s to FILE, with
# its anonymous and file-backed parts (RssAnon, RssFile) at that sample, until killed or the
# process is gone.
rss_sampler() {
    local peak=0 rss anon file
    while read -r rss anon file < <(awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s ", $2} END {print ""}' \
        "/proc/$1/status" 2>/dev/null) && [ -n "$rss" ]; do
        if [ "$rss" -gt "$peak" ]; then peak=$rss; echo "$rss $anon $file" >"$2"; fi
        sleep 0.2
    done
}

now() { date +%s.%N; }
elapsed() { python3 -c "print(max($2 - $1, 1e-9))"; }
bytes_of() { python3 -c "
s='$1'.upper(); m={'K':1<<10,'M':1<<20,'G':1<<30,'T':1<<40}
print(int(float(s[:-1])*m[s[-1]]) if s[-1] in m else int(s))"; }
SIZE_B=$(bytes_of "$SIZE")
FRAME_B=$(bytes_of "$FRAME_SIZE")
MIXED_FILE_B=$(( SIZE_B / MIXED_READERS / 1048576 * 1048576 ))
[ "$MIXED_FILE_B" -ge 1048576 ] || MIXED_FILE_B=1048576

RESULTS=$WORK/results.tsv
: >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$RESULTS"; echo "    $1 $2: $4 $5" >&2; }

# ---- workloads --------------------------------------------------------------------------
FIO="fio --output-format=json --ioengine=psync --group_reporting --fallocate=none"

seq_io() {  # target round dir
    local t=$1 r=$2 d=$3 s e
    local c0
    cold "$t"
    mkdir -p "$d" # rclone forgets empty directories across a remount (S3 has no directories)
    c0=$(cpu_mark "$t")
    s=$(now); $FIO --name=seqwrite --directory="$d" --filename=seq.dat --rw=write --bs=1M --size="$SIZE" --end_fsync=1 >/dev/null
    settle seq.dat 1 "$SIZE_B"; e=$(now)
    record "$t" "$r" "seq write 1 MiB, cold (MB/s)" "$(python3 -c "print(round($SIZE_B/1e6/$(elapsed "$s" "$e"),1))")" hi
    cpu_record "$t" "$r" "seq write 1 MiB, cold: mount CPU (s/GB)" "$c0" "$SIZE_B"
    s=$(now); $FIO --name=seqwrite2 --directory="$d" --filename=seq.dat --rw=write --bs=1M --size="$SIZE" --end_fsync=1 >/dev/null
    settle seq.dat 1 "$SIZE_B"; e=$(now)
    record "$t" "$r" "seq overwrite 1 MiB, warm (MB/s)" "$(python3 -c "print(round($SIZE_B/1e6/$(elapsed "$s" "$e"),1))")" hi
    cold "$t"
    c0=$(cpu_mark "$t")
    s=$(now); $FIO --name=seqread --directory="$d" --filename=seq.dat --rw=read --bs=1M --size="$SIZE" >/dev/null; e=$(now)
    record "$t" "$r" "seq read 1 MiB, cold (MB/s)" "$(python3 -c "print(round($SIZE_B/1e6/$(elapsed "$s" "$e"),1))")" hi
    cpu_record "$t" "$r" "seq read 1 MiB, cold: mount CPU (s/GB)" "$c0" "$SIZE_B"
    s=$(now); $FIO --name=seqread2 --directory="$d" --filename=seq.dat --rw=read --bs=1M --size="$SIZE" >/dev/null; e=$(now)
    record "$t" "$r" "seq read 1 MiB, warm (MB/s)" "$(python3 -c "print(round($SIZE_B/1e6/$(elapsed "$s" "$e"),1))")" hi
    cold "$t"
    local iops
    iops=$($FIO --name=randread --directory="$d" --filename=seq.dat --rw=randread --bs=4k --size="$SIZE" \
        --time_based --runtime="$RAND_TIME" --randrepeat=1 |
        python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))')
    record "$t" "$r" "random read 4 KiB, cold start, ${RAND_TIME}s (IOPS)" "$iops" hi
    rm -f "$d/seq.dat"
}

small_files() {  # target round dir
    local t=$1 r=$2 d=$3/small out
    mkdir -p "$d"
    out=$(SETTLE_CMD="$(declare -f settle die); T=$t BENCH_RC=$BENCH_RC settle small $SMALL_FILES $((SMALL_FILES * 4096))" \
        python3 - "$d" "$SMALL_FILES" "$([ "$t" = rclone ] && echo settle)" <<'EOF'
import os, subprocess, sys, time
d, n, settle = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = os.urandom(4096)
t = time.monotonic()
for i in range(n):
    fd = os.open(f"{d}/f{i:06d}", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    os.write(fd, data)
    os.close(fd)
if settle:  # rclone: until the uploads are done (see settle in the script)
    subprocess.run(["bash", "-c", os.environ["SETTLE_CMD"]], check=True)
c = time.monotonic() - t
t = time.monotonic()
for i in range(n):
    os.stat(f"{d}/f{i:06d}")
s = time.monotonic() - t
t = time.monotonic()
for i in range(n):
    os.unlink(f"{d}/f{i:06d}")
u = time.monotonic() - t
print(round(n / c), round(n / s), round(n / u))
EOF
)
    [ -n "$out" ] || die "small files on $t failed"
    read -r c s u <<<"$out"
    record "$t" "$r" "create+write 4 KiB+close, ${SMALL_FILES} files (files/s)" "$c" hi
    record "$t" "$r" "stat, ${SMALL_FILES} files (ops/s)" "$s" hi
    record "$t" "$r" "unlink, ${SMALL_FILES} files (ops/s)" "$u" hi
    rmdir "$d"
}

frames() {  # target round dir
    local t=$1 r=$2 d=$3/frames s e per total
    mkdir -p "$d"
    per=$(( (FRAMES + FRAME_WRITERS - 1) / FRAME_WRITERS ))
    total=$(python3 -c "print($per*$FRAME_WRITERS*$FRAME_B)")
    s=$(now)
    $FIO --name=frame --directory="$d" --numjobs="$FRAME_WRITERS" --nrfiles="$per" --filesize="$FRAME_SIZE" \
        --bs=1M --rw=write --openfiles=1 --file_service_type=sequential --create_on_open=1 --fsync_on_close=1 >/dev/null
    settle frames "$((per * FRAME_WRITERS))" "$total"
    e=$(now)
    record "$t" "$r" "frames: write $((per * FRAME_WRITERS)) x $FRAME_SIZE, $FRAME_WRITERS writers (MB/s)" \
        "$(python3 -c "print(round($total/1e6/$(elapsed "$s" "$e"),1))")" hi
    cold "$t"
    s=$(now)
    $FIO --name=frame --directory="$d" --numjobs="$FRAME_WRITERS" --nrfiles="$per" --filesize="$FRAME_SIZE" \
        --bs=1M --rw=read --openfiles=1 --file_service_type=sequential >/dev/null
    e=$(now)
    record "$t" "$r" "frames: read back, cold, $FRAME_WRITERS readers (MB/s)" \
        "$(python3 -c "print(round($total/1e6/$(elapsed "$s" "$e"),1))")" hi
    rm -rf "$d"
}

mixed() {  # target round dir
    local t=$1 r=$2 d=$3/mixed per_w pid peak_f sampler out rd wr peak sampled anon file
    mkdir -p "$d"
    # Untimed: the readers' files (mread.N.0), committed (and uploaded, for rclone), then a cold
    # restart so that the readers start from the store.
    $FIO --name=mread --directory="$d" --numjobs="$MIXED_READERS" --size="$MIXED_FILE_B" --bs=1M \
        --rw=write --end_fsync=1 >/dev/null
    settle mixed "$MIXED_READERS" "$((MIXED_READERS * MIXED_FILE_B))"
    cold "$t"
    per_w=$(( (SIZE_B / FRAME_B + 2 * MIXED_WRITERS - 1) / (2 * MIXED_WRITERS) ))
    [ "$per_w" -ge 1 ] || per_w=1
    pid=$(mount_pid "$t")
    peak_f=$WORK/data/rss.peak
    echo "0 0 0" >"$peak_f"
    if [ -n "$pid" ]; then
        echo 5 2>/dev/null >"/proc/$pid/clear_refs" || true # resets VmHWM to the current RSS
        rss_sampler "$pid" "$peak_f" &
        sampler=$!
    fi
    out=$($FIO --directory="$d" --bs=1M --time_based --runtime="$MIXED_TIME" \
        --name=mread --numjobs="$MIXED_READERS" --size="$MIXED_FILE_B" --rw=read \
        --name=mwrite --numjobs="$MIXED_WRITERS" --nrfiles="$per_w" --filesize="$FRAME_SIZE" --rw=write \
        --openfiles=1 --file_service_type=sequential --create_on_open=1 --fsync_on_close=1 |
        python3 -c 'import json,sys
# One group (group_reporting): job_runtime sums the runtimes of the jobs; the runtime of each direction
# is the wall-clock time of the group.
jobs = json.load(sys.stdin)["jobs"]
print(*(round(sum(j[k]["io_bytes"] for j in jobs) / 1e6 / (max(j[k]["runtime"] for j in jobs) / 1000), 1)
        for k in ("read", "write")))')
    read -r rd wr <<<"$out"
    record "$t" "$r" "mixed: $MIXED_READERS readers + $MIXED_WRITERS writers, ${MIXED_TIME}s: read (MB/s)" "$rd" hi
    record "$t" "$r" "mixed: $MIXED_READERS readers + $MIXED_WRITERS writers, ${MIXED_TIME}s: write (MB/s)" "$wr" hi
    if [ -n "$pid" ]; then
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        peak=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        read -r sampled anon file <"$peak_f"
        peak=$(python3 -c "print(round(max(${peak:-0}, $sampled) / 1024, 1))")
        record "$t" "$r" "mixed: peak RSS of the mount (MiB)" "$peak" lo
        # Where the highest sample's memory was: the mount's own buffers (anonymous) or
        # mapped files (the block cache's entries, which the kernel can reclaim).
        record "$t" "$r" "mixed: anonymous part of the highest RSS sample (MiB)" "$(( ${anon:-0} / 1024 ))" lo
        record "$t" "$r" "mixed: file-backed part of the highest RSS sample (MiB)" "$(( ${file:-0} / 1024 ))" lo
    fi
    rm -rf "$d"
}

listing() {  # target round dir
    local t=$1 r=$2 d=$3/many s e
    mkdir -p "$d"
    # Populating is not timed. rclone and s3fs get their entries straight into their bucket
    # (s3fs creates 16-40 files/s through its mount in a large folder: 100k would take over an
    # hour); the rest through the mount, 16 creators. Every mount restarts (cold) before `ls`.
    case $t in
    rclone | s3fs) populate_bucket "bench-$t" bench/many ;;
    *) populate_dir "$d" ;;
    esac
    cold "$t"
    s=$(now); ls -l "$d" >/dev/null; e=$(now)
    record "$t" "$r" "ls -l of ${LS_ENTRIES} entries, cold (s)" "$(python3 -c "print(round($(elapsed "$s" "$e"),2))")" lo
    s=$(now); ls -l "$d" >/dev/null; e=$(now)
    record "$t" "$r" "ls -l of ${LS_ENTRIES} entries, warm (s)" "$(python3 -c "print(round($(elapsed "$s" "$e"),2))")" lo
    local n
    n=$(ls "$d" | wc -l)
    [ "$n" -eq "$LS_ENTRIES" ] || die "$t lists $n entries, not $LS_ENTRIES"
    rm -rf "$d"
}

# LS_ENTRIES empty files in folder $2 of bucket $1, uploaded from a local copy made once.
populate_bucket() {
    local src=$WORK/data/ls-src
    if [ "$(find "$src" -type f 2>/dev/null | wc -l)" -ne "$LS_ENTRIES" ]; then
        rm -rf "$src"
        mkdir -p "$src"
        populate_dir "$src"
    fi
    rclone copy "$src" "benchs3:$1/$2" --transfers 32 --checkers 32 --no-traverse --no-check-dest -q ||
        die "cannot upload the ls entries to $1"
}

# LS_ENTRIES empty files in directory $1, 16 creators.
populate_dir() {
    python3 - "$1" "$LS_ENTRIES" <<'EOF'
import os, sys
from concurrent.futures import ThreadPoolExecutor
d, n = sys.argv[1], int(sys.argv[2])
def make(i):
    os.close(os.open(f"{d}/entry{i:07d}", os.O_CREAT | os.O_WRONLY, 0o644))
with ThreadPoolExecutor(16) as pool:
    list(pool.map(make, range(n), chunksize=256))
EOF
}

# ---- run: rounds of A B A B ---------------------------------------------------------------
# Frames and the mixed workload need room: Studio Drive's block stores keep every round's data
# (the bench runs no GC), and the target being measured holds one more copy plus its cache's
# (rclone's VFS cache fills the disk with EIO otherwise, as in stop 11's run K). The mixed
# workload writes up to 2 x SIZE (the readers' files and the writers' files).
sd_targets=$(for t in $TARGETS; do case $t in studiodrive*) echo "$t" ;; esac; done | wc -l)
per_round=0
case " $WORKLOADS " in *" frames "*) per_round=$(python3 -c "print($per_round + $FRAMES * $FRAME_B)") ;; esac
case " $WORKLOADS " in *" mixed "*) per_round=$(python3 -c "print($per_round + 2 * $SIZE_B)") ;; esac
need=$(python3 -c "print($per_round * (2 + $sd_targets * $ROUNDS))")
avail=$(df --output=avail -B1 "$WORK" | tail -1)
[ "$avail" -ge "$need" ] || die "frames and mixed need about $((need >> 30)) GiB free under $WORK, $((avail >> 30)) GiB available: lower FRAMES, SIZE or ROUNDS, or free space"

say "targets: $TARGETS; SIZE=$SIZE RAND_TIME=$RAND_TIME SMALL_FILES=$SMALL_FILES FRAMES=$FRAMES x $FRAME_SIZE" \
    "LS_ENTRIES=$LS_ENTRIES MIXED_TIME=$MIXED_TIME ROUNDS=$ROUNDS WORKLOADS=$WORKLOADS"
START=$(date -u +%FT%TZ)
for r in $(seq "$ROUNDS"); do
    for t in $TARGETS; do
        say "round $r: $t"
        T=$t
        start "$t"
        d=$(dir_of "$t")/bench
        mkdir -p "$d"
        for w in $WORKLOADS; do
            case $w in
            seq) seq_io "$t" "$r" "$d" ;;
            small) small_files "$t" "$r" "$d" ;;
            frames) frames "$t" "$r" "$d" ;;
            ls) listing "$t" "$r" "$d" ;;
            mixed) mixed "$t" "$r" "$d" ;;
            *) die "unknown workload $w (seq small frames ls mixed)" ;;
            esac
        done
        rm -rf "$d"
        stop "$t"
    done
done

# ---- table ------------------------------------------------------------------------------
python3 - "$RESULTS" "$TARGETS" "$START" "$GOAL_RSS_MIB" >"$OUT" <<'EOF'
import sys, statistics
from collections import OrderedDict
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
targets = sys.argv[2].split()
data, better = OrderedDict(), {}
for t, r, m, v, hl in rows:
    data.setdefault(m, {}).setdefault(t, []).append(float(v))
    better[m] = hl
base = "bindfs" if "bindfs" in targets else targets[0]
print(f"Started {sys.argv[3]}; median of rounds (all rounds in brackets); ratio = target / {base} "
      f"for rates, {base} / target for times (above 1 is better than the baseline).\n")
print("| workload | " + " | ".join(targets) + " |")
print("|---|" + "---|" * len(targets))
def fmt(x):
    return f"{x:.2f}" if x < 10 else f"{x:.0f}"
for m, per in data.items():
    cells = []
    b = statistics.median(per[base]) if base in per else None
    for t in targets:
        vs = per.get(t)
        if not vs:
            cells.append("–")
            continue
        med = statistics.median(vs)
        cell = fmt(med) + " [" + ", ".join(fmt(v) for v in vs) + "]"
        if b and t != base and med > 0:
            ratio = med / b if better[m] == "hi" else b / med
            cell += f" ({ratio:.2f}x)"
        cells.append(cell)
    print(f"| {m} | " + " | ".join(cells) + " |")

# Goals of issue 21, from the same medians. (workload prefix, target, reference, threshold,
# strict): ratio = target / reference for rates, reference / target for times; the goal is met
# when the ratio is >= threshold (> threshold when strict, "ahead of"). A reference of None
# compares the median itself with the threshold (lower is better, e.g. peak RSS in MiB).
rss = float(sys.argv[4])
GOALS = [
    ("seq write 1 MiB, cold (MB/s)", "studiodrive", "local", 0.5, False),
    ("seq write 1 MiB, cold (MB/s)", "studiodrive-s3", "rclone", 1.0, True),
    ("frames: write ", "studiodrive-s3", "rclone", 1.0, True),
    ("frames: write ", "studiodrive-s3", "s3fs", 1.0, True),
    ("frames: read back, cold", "studiodrive-s3", "rclone", 1.0, True),
    ("frames: read back, cold", "studiodrive-s3", "s3fs", 1.0, True),
    ("random read 4 KiB, cold", "studiodrive-s3", "s3fs", 1.0, False),
    ("random read 4 KiB, cold", "studiodrive", "bindfs", 0.5, False),
    ("seq read 1 MiB, warm (MB/s)", "studiodrive", "bindfs", 1.0, False),
    ("seq read 1 MiB, warm (MB/s)", "studiodrive-s3", "bindfs", 1.0, False),
    ("mixed: peak RSS of the mount (MiB)", "studiodrive", None, rss, False),
    ("mixed: peak RSS of the mount (MiB)", "studiodrive-s3", None, rss, False),
]
def median_of(prefix, t):
    for m, per in data.items():
        if m.startswith(prefix) and per.get(t):
            return m, statistics.median(per[t])
    return None, None
print("\nGoals (issue 21): ratio of the medians above; threshold; met or missed.\n")
print("| goal | measured | threshold | result |")
print("|---|---|---|---|")
for prefix, t, ref, thr, strict in GOALS:
    m, v = median_of(prefix, t)
    name = (m or prefix.rstrip(" ,:")) + f": {t}" + (f" vs {ref}" if ref else "")
    if ref is None:
        if v is None:
            print(f"| {name} | – | <= {thr:g} | not measured |")
        else:
            print(f"| {name} | {fmt(v)} | <= {thr:g} | {'met' if v <= thr else 'missed'} |")
        continue
    _, b = median_of(m or prefix, ref)
    if v is None or b is None or v <= 0 or b <= 0:
        print(f"| {name} | – | {'>' if strict else '>='} {thr:.1f}x | not measured |")
        continue
    ratio = v / b if better[m] == "hi" else b / v
    ok = ratio > thr if strict else ratio >= thr
    print(f"| {name} | {ratio:.2f}x | {'>' if strict else '>='} {thr:.1f}x | {'met' if ok else 'missed'} |")
EOF
cat "$OUT"
echo "(table in $OUT, raw figures in $RESULTS)" >&2
