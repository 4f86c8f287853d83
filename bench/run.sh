#!/usr/bin/env bash
# holdfast benchmark: holdfast vs restic, borg, bupstash (and a tar|zstd baseline).
#
# Usage:
#   bench/run.sh [--scale S] [--tools holdfast,restic,borg,bupstash,tar] [--work DIR]
#                [--no-build] [--garage-nodes N] [--garage-compression L] [--split-cpus]
#                [--rtt MS] [--restore-to disk|tmpfs]
#
#   --scale S    data set size; 1.0 = ~0.47 GB of real data plus a 1 GiB sparse file
#                (default 1.0; use 0.05 for a quick smoke run)
#   --tools L    comma-separated tools to run, in this order (default: the five local
#                ones); holdfast_s3 and restic_s3 back up into a Garage on loopback
#                (S3 API; started here in WORK/garage, one bucket per tool)
#   --garage-nodes N  nodes of that Garage (replication factor N; default 1)
#   --garage-compression L  its compression_level: a zstd level (default 1, Garage's own
#                default) or none. With a level Garage checks a block it reads by
#                zstd's checksum, without, by its BLAKE2 hash: more server CPU per
#                restore (~0.2 s here), less per backup.
#   --split-cpus  Garage on the last CPU, every tool's steps on the others (taskset):
#                stands in for a Garage on another host, as off-site storage is;
#                without it Garage shares every CPU with the tool it serves
#   --rtt MS     the S3 tools reach Garage through bench/delay_proxy.py, which adds
#                MS milliseconds of round-trip time (off-site storage is not on
#                loopback; there is no netem here); the proxy runs beside Garage
#   --work DIR   scratch directory (default ${TMPDIR:-/tmp}/holdfast-bench); its data/,
#                repos/, restore/, logs/, cache/ and state/ subdirectories are wiped
#   --no-build   do not run cargo; use $HOLDFAST_BIN or target/release/holdfast as is
#   --no-quickack  leave loopback's delayed ACKs on (see "quickack" below)
#   --restore-to disk|tmpfs  where phase 4 restores (default disk: WORK's file
#                system, each restore right after the previous one was deleted,
#                as a user restores after losing files; tmpfs: a tmpfs, as root)
#
#   HOLDFAST_BENCH_EXTRA_INIT_ARGS   extra words appended to `holdfast init`
#                                    (e.g. "--avg-chunk-size 4194304")
#   HOLDFAST_BIN                     holdfast binary (default target/release/holdfast)
#
# What it does (one run, every tool sees exactly the same data):
#   build    cargo build --release --locked
#   data     bench/gen_dataset.py WORK/data --scale S (generated once)
#   init     every tool initialises an encrypted repository with zstd compression
#              holdfast: HOLDFAST_PASSPHRASE         restic: repo v2, --compression auto
#              borg: repokey-blake2, zstd,3          bupstash: key file, zstd:3 (default)
#   phase 1  first backup of WORK/data by every tool: wall, CPU (user+sys), peak RSS,
#            repository size (du -sb). tar: `tar --sparse -cf - DATA | zstd -3 -T0`.
#   mutate   gen_dataset.py --mutate (2% of SQL rows, ~1% of small files, a few new files)
#   phase 2  second backup by every tool: wall time, bytes added to the repository
#   phase 3  third backup with nothing changed: wall time, bytes added
#   phase 4  restore of the latest snapshot into an empty directory (on WORK's disk,
#            right after deleting the previous restore; or a tmpfs): wall time, peak
#            RSS, allocated KiB of sparse/big.img (1 GiB apparent; ~1024 KiB = holes
#            kept), and a comparison with WORK/data (content via diff -r; type, mode,
#            size and mtime in whole seconds via find).
#   All tools back up the same absolute path (WORK/data) so their incremental
#   detection applies. Passphrases only go through the environment, never argv.
#   Everything runs with a warm page cache (dropping caches is not reliable here);
#   the data set was just written and fits in RAM, so reads are mostly cache hits.
#
# A tool whose binary is missing or whose step fails shows "failed" in its cells (the
# reason is listed under the table; logs are in WORK/logs). Output: the markdown table
# is printed and written to WORK/results.md; raw numbers go to WORK/results.csv.

set -uo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
SCALE=1.0
TOOLS=holdfast,restic,borg,bupstash,tar
GARAGE_NODES=1
GARAGE_COMPRESSION=1
WORK=${TMPDIR:-/tmp}/holdfast-bench
BUILD=1
QUICKACK=1
RESTORE_TO=disk
SPLIT_CPUS=0
RTT_MS=0

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --scale) SCALE=$2; shift 2 ;;
        --tools) TOOLS=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --no-quickack) QUICKACK=0; shift ;;
        --restore-to)
            RESTORE_TO=$2; shift 2
            [[ $RESTORE_TO =~ ^(disk|tmpfs)$ ]] || { echo "run.sh: --restore-to: disk or tmpfs" >&2; exit 2; } ;;
        --split-cpus) SPLIT_CPUS=1; shift ;;
        --rtt)
            RTT_MS=$2; shift 2
            [[ $RTT_MS =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "run.sh: --rtt: milliseconds" >&2; exit 2; } ;;
        --garage-nodes) GARAGE_NODES=$2; shift 2 ;;
        --garage-compression)
            GARAGE_COMPRESSION=$2; shift 2
            [[ $GARAGE_COMPRESSION =~ ^(none|-?[0-9]+)$ ]] || { echo "run.sh: --garage-compression: none or a zstd level" >&2; exit 2; } ;;
        -h|--help) usage 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage 2 ;;
    esac
done
IFS=, read -r -a TOOL_LIST <<<"$TOOLS"
for t in "${TOOL_LIST[@]}"; do
    case $t in holdfast|restic|borg|bupstash|tar|holdfast_s3|restic_s3) ;;
        *) echo "run.sh: unknown tool '$t'" >&2; exit 2 ;;
    esac
done
[[ -x /usr/bin/time ]] || { echo "run.sh: /usr/bin/time missing (apt-get install time)" >&2; exit 1; }
# With --split-cpus: TOOL_CPUS runs every timed step, GARAGE_CPUS the Garage servers.
TOOL_TASKSET=() GARAGE_TASKSET=() CPU_SPLIT="none: Garage and the tools share all $(nproc) CPUs"
if [[ $SPLIT_CPUS == 1 ]]; then
    last=$(($(nproc) - 1))
    [[ $last -ge 1 ]] || { echo "run.sh: --split-cpus needs at least 2 CPUs" >&2; exit 2; }
    command -v taskset >/dev/null || { echo "run.sh: --split-cpus needs taskset (util-linux)" >&2; exit 1; }
    tool_cpus=0; [[ $last -gt 1 ]] && tool_cpus=0-$((last - 1))
    TOOL_TASKSET=(taskset -c "$tool_cpus") GARAGE_TASKSET=(taskset -c "$last")
    CPU_SPLIT="tools on CPU $tool_cpus, Garage on CPU $last (taskset)"
fi

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
export DATA=$WORK/data REPOS=$WORK/repos STATE=$WORK/state LOGS=$WORK/logs
RESTORE=$WORK/restore
if [[ -f $WORK/garage/pids ]]; then xargs -r kill -9 <"$WORK/garage/pids" 2>/dev/null; fi
umount "$RESTORE" 2>/dev/null
# What to undo when the run ends, however it ends.
CLEANUP=()
cleanup() { local c; for c in "${CLEANUP[@]}"; do eval "$c"; done; }
trap cleanup EXIT
rm -rf "$DATA" "$REPOS" "$RESTORE" "$LOGS" "$STATE" "$WORK/cache" "$WORK/config" "$WORK/garage"
mkdir -p "$DATA" "$REPOS" "$RESTORE" "$LOGS" "$STATE" "$WORK/cache" "$WORK/config"
# ext4 skips inodes freed in the last 60 s (300 s while their block is dirty)
# when it creates files, scanning past each: restores started right after
# big deletions are several times slower. Phase 4 waits that out.
LAST_DELETE=$(date +%s)

# Keep every tool's caches and config inside WORK (not counted in repository sizes).
export XDG_CACHE_HOME=$WORK/cache XDG_CONFIG_HOME=$WORK/config
export RESTIC_CACHE_DIR=$WORK/cache/restic BORG_BASE_DIR=$WORK/cache/borg-base
export BUPSTASH_QUERY_CACHE=$WORK/cache/bupstash-query-cache
export PATH=$HOME/.cargo/bin:$PATH
# Benchmark-only secret, passed through the environment only.
BENCH_PASS=holdfast-bench-not-a-secret
export HOLDFAST_PASSPHRASE=$BENCH_PASS RESTIC_PASSWORD=$BENCH_PASS BORG_PASSPHRASE=$BENCH_PASS
export BUPSTASH_REPOSITORY=$REPOS/bupstash BUPSTASH_KEY=$STATE/bupstash.key
export HOLDFAST_BIN=${HOLDFAST_BIN:-$REPO_ROOT/target/release/holdfast}
export HOLDFAST_BENCH_EXTRA_INIT_ARGS=${HOLDFAST_BENCH_EXTRA_INIT_ARGS:-}

declare -A R=()      # R[tool.key] = measured value
declare -A FAIL=()   # FAIL[tool] = reason the tool dropped out
declare -A LAST=()   # LAST[tool] = phase number of the tool's latest successful backup

# --------------------------------------------------------------------------
# Per-tool steps. They run in a child `bash -o pipefail` under /usr/bin/time,
# so they are exported functions using only exported variables.
#   <tool>_init            create the repository (not timed)
#   <tool>_backup PHASE    back up $DATA
#   <tool>_restore DIR N   restore the snapshot made in phase N into empty DIR
# --------------------------------------------------------------------------

holdfast_init() {
    # shellcheck disable=SC2086  # extra args are meant to be word-split
    "$HOLDFAST_BIN" init --repo "$REPOS/holdfast" $HOLDFAST_BENCH_EXTRA_INIT_ARGS
}
holdfast_backup() { "$HOLDFAST_BIN" backup --repo "$REPOS/holdfast" --tag "phase$1" "$DATA"; }
holdfast_restore() { "$HOLDFAST_BIN" restore --repo "$REPOS/holdfast" latest --to "$1"; }

holdfast_s3_init() {
    # shellcheck disable=SC2086
    "$HOLDFAST_BIN" init --repo "s3://hf-bench-holdfast/repo" $HOLDFAST_BENCH_EXTRA_INIT_ARGS
}
holdfast_s3_backup() { "$HOLDFAST_BIN" backup --repo "s3://hf-bench-holdfast/repo" --tag "phase$1" "$DATA"; }
holdfast_s3_restore() { "$HOLDFAST_BIN" restore --repo "s3://hf-bench-holdfast/repo" latest --to "$1"; }

restic_s3() { restic -o s3.bucket-lookup=path -o s3.region=garage --repo "s3:$AWS_ENDPOINT_URL/hf-bench-restic/repo" "$@"; }
restic_s3_init() { restic_s3 init --repository-version 2; }
restic_s3_backup() { restic_s3 backup --compression auto --host holdfast-bench --tag "phase$1" "$DATA"; }
restic_s3_restore() { restic_s3 restore latest --target "$1"; }

restic_init() { restic init --repo "$REPOS/restic" --repository-version 2; }
restic_backup() {
    restic --repo "$REPOS/restic" backup --compression auto --host holdfast-bench \
        --tag "phase$1" "$DATA"
}
restic_restore() { restic --repo "$REPOS/restic" restore latest --target "$1"; }

borg_init() { borg init --encryption repokey-blake2 "$REPOS/borg"; }
# borg exits with 1 for warnings (e.g. a file changed while read); the archive is complete.
borg_ok() { local rc=$?; [[ $rc -le 1 ]]; }
borg_backup() { borg create --stats --compression zstd,3 "$REPOS/borg::phase$1" "$DATA"; borg_ok; }
borg_restore() { cd "$1" && { borg extract --sparse "$REPOS/borg::phase$2"; borg_ok; }; }

bupstash_init() { bupstash new-key -o "$BUPSTASH_KEY" && bupstash init; }
bupstash_backup() {
    # The send log is bupstash's incremental mechanism (stat cache + sent chunks).
    bupstash put --no-progress --print-stats --send-log "$STATE/bupstash.sendlog" \
        phase="$1" "$DATA" >"$STATE/bupstash.id.$1"
}
bupstash_restore() {
    bupstash get --no-progress id="$(cat "$STATE/bupstash.id.$2")" | tar -x -C "$1"
}

tar_backup() {
    # Baseline: one sequential read + zstd; the compressed size is kept for reference.
    tar --sparse -cf - "$DATA" 2>/dev/null | zstd -3 -T0 -q -c | tee "$STATE/tar.tar.zst" | wc -c >"$STATE/tar.size"
}
tar_restore() { zstd -dc "$STATE/tar.tar.zst" | tar --sparse -x -C "$1"; }

export -f borg_ok holdfast_init holdfast_backup holdfast_restore restic_init restic_backup \
    holdfast_s3_init holdfast_s3_backup holdfast_s3_restore restic_s3 restic_s3_init \
    restic_s3_backup restic_s3_restore \
    restic_restore borg_init borg_backup borg_restore bupstash_init bupstash_backup \
    bupstash_restore tar_backup tar_restore

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

say() { printf '%s\n' "$*" >&2; }
mib() { awk -v b="$1" -v p="${2:-1}" 'BEGIN { printf "%.*f", p, b / 1048576 }'; }
repo_bytes() {
    case $1 in
        holdfast_s3) s3_bytes hf-bench-holdfast ;;
        restic_s3) s3_bytes hf-bench-restic ;;
        *) du -sb "$REPOS/$1" | cut -f1 ;;
    esac
}
# Sum of the sizes of every object in bucket $1 (S3 ListObjectsV2, signed by curl).
s3_bytes() {
    local token="" total=0 body url
    while :; do
        url="$AWS_ENDPOINT_URL/$1?list-type=2"
        [[ -n $token ]] && url+="&continuation-token=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$token")"
        body=$(curl -s --aws-sigv4 "aws:amz:garage:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
            -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$url")
        total=$((total + $(grep -o '<Size>[0-9]*</Size>' <<<"$body" | tr -dc '0-9\n' | awk '{ s += $1 } END { print s + 0 }')))
        token=$(grep -o '<NextContinuationToken>[^<]*' <<<"$body" | sed 's/<NextContinuationToken>//')
        [[ -z $token ]] && break
    done
    echo "$total"
}
alive() { [[ -z ${FAIL[$1]:-} ]]; }

# User+system clock ticks of the Garage processes so far (0 without Garage).
garage_cpu_ticks() {
    local total=0 pid
    [[ -f $WORK/garage/pids ]] || { echo 0; return; }
    while read -r pid; do
        [[ -r /proc/$pid/stat ]] && total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
    done <"$WORK/garage/pids"
    echo "$total"
}

# timed TOOL STEP FUNC ARGS...: run FUNC under /usr/bin/time; on success store
# R[TOOL.STEP.wall|cpu|rss] (s, s, MiB) and return 0; on failure mark TOOL failed.
# For the S3 tools also R[TOOL.STEP.server_cpu]: the CPU Garage used meanwhile
# (on the same CPUs as the tool unless --split-cpus).
timed() {
    local tool=$1 step=$2; shift 2
    local tf=$LOGS/$tool.$step.time lf=$LOGS/$tool.$step.log server0
    server0=$(garage_cpu_ticks)
    "${TOOL_TASKSET[@]}" /usr/bin/time -f '%e %U %S %M' -o "$tf" bash -o pipefail -c '"$@"' _ "$@" >"$lf" 2>&1
    local rc=$?
    if [[ $tool == *_s3 ]]; then
        R[$tool.$step.server_cpu]=$(awk -v a="$server0" -v b="$(garage_cpu_ticks)" -v hz="$(getconf CLK_TCK)" \
            'BEGIN { printf "%.2f", (b - a) / hz }')
    fi
    if [[ $rc -ne 0 ]]; then
        FAIL[$tool]="$step failed (exit $rc), see logs/$tool.$step.log"
        say "  $tool $step: FAILED (exit $rc): $(tail -n 3 "$lf" | tr '\n' ' ')"
        return 1
    fi
    local wall user sys rss
    read -r wall user sys rss < <(tail -n 1 "$tf")
    R[$tool.$step.wall]=$wall
    R[$tool.$step.cpu]=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
    R[$tool.$step.rss]=$(awk -v k="$rss" 'BEGIN { printf "%.0f", k / 1024 }')
    say "  $tool $step: ${wall}s wall, ${R[$tool.$step.cpu]}s CPU, ${R[$tool.$step.rss]} MiB peak RSS"
}

# type, mode, size (files only) and mtime in whole seconds of every entry below $1
# whose type is in $2 (find -type letters, e.g. "f" or "d").
tree_meta() {
    (cd "$1" && find . -mindepth 1 -printf '%y %m %s %T@ %P\n') |
        awk -v types="$2" 'index(types, $1) { if ($1 != "f") $3 = "-"; $4 = int($4); print }' |
        sort -k5
}

# Compare a restored tree with $DATA. Prints "ok" or what differs; details go to
# logs/TOOL.verify.log.
verify_restore() {
    local root=$1 tool=$2
    local log=$LOGS/$tool.verify.log
    if ! diff -rq --no-dereference "$DATA" "$root" >"$log" 2>&1; then
        echo "content differs"; return
    fi
    if ! diff <(tree_meta "$DATA" f) <(tree_meta "$root" f) >>"$log"; then
        echo "file metadata differs"; return
    fi
    if ! diff <(tree_meta "$DATA" dl) <(tree_meta "$root" dl) >>"$log"; then
        echo "ok, dir metadata differs"; return
    fi
    echo "ok"
}

tool_version() {
    case $1 in
        holdfast) "$HOLDFAST_BIN" --version 2>/dev/null | head -n 1 ;;
        restic) restic version 2>/dev/null | cut -d' ' -f1-2 ;;
        borg) borg --version 2>/dev/null ;;
        bupstash) bupstash --version 2>/dev/null ;;
        tar) echo "$(tar --version | head -n 1) + $(zstd --version | grep -o 'v[0-9.]*')" ;;
        holdfast_s3) echo "$("$HOLDFAST_BIN" --version 2>/dev/null | head -n 1) into $(garage --version | head -n 1), $GARAGE_NODES node(s), compression_level $GARAGE_COMPRESSION" ;;
        restic_s3) echo "$(restic version 2>/dev/null | cut -d' ' -f1-2) into the same Garage" ;;
    esac
}

# --------------------------------------------------------------------------
# setup: build, check binaries, generate data, init repositories
# --------------------------------------------------------------------------

T_START=$(date +%s)
in_list() { [[ ",$TOOLS," == *",$1,"* ]]; }

if in_list holdfast && [[ $BUILD == 1 ]]; then
    say "== building holdfast (cargo build --release --locked)"
    if ! (cd "$REPO_ROOT" && cargo build --release --locked) >"$LOGS/build.log" 2>&1; then
        FAIL[holdfast]="build failed, see logs/build.log"
        say "  build FAILED: $(tail -n 3 "$LOGS/build.log" | tr '\n' ' ')"
    fi
fi
for t in "${TOOL_LIST[@]}"; do
    alive "$t" || continue
    case $t in
        holdfast) [[ -x $HOLDFAST_BIN ]] || FAIL[holdfast]="binary $HOLDFAST_BIN missing" ;;
        tar) command -v zstd >/dev/null || FAIL[tar]="zstd not installed" ;;
        holdfast_s3) [[ -x $HOLDFAST_BIN ]] || FAIL[holdfast_s3]="binary $HOLDFAST_BIN missing" ;;
        restic_s3) command -v restic >/dev/null || FAIL[restic_s3]="restic not installed" ;;
        *) command -v "$t" >/dev/null || FAIL[$t]="$t not installed" ;;
    esac
done

# The Garage CLI right after a start may find the cluster not up yet.
retry() { for _ in $(seq 1 100); do "$@" && return 0; sleep 0.2; done; return 1; }
# A Garage for the S3 tools: GARAGE_NODES nodes on loopback, one bucket per tool.
start_garage() {
    local g=$WORK/garage secret ids=() i s3 rpc GARAGE_COMPRESSION_TOML="\"none\""
    [[ $GARAGE_COMPRESSION == none ]] || GARAGE_COMPRESSION_TOML=$GARAGE_COMPRESSION
    mkdir -p "$g"
    secret=$(openssl rand -hex 32)
    for ((i = 0; i < GARAGE_NODES; i++)); do
        read -r s3 rpc < <(python3 -c 'import socket
ps = []
for _ in range(2):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); ps.append(s.getsockname()[1]); s.close()
print(*ps)')
        mkdir -p "$g/n$i"
        printf '%s\n' "metadata_dir = \"$g/n$i/meta\"" "data_dir = \"$g/n$i/data\"" 'db_engine = "sqlite"' \
            "replication_factor = $GARAGE_NODES" "compression_level = $GARAGE_COMPRESSION_TOML" "rpc_bind_addr = \"127.0.0.1:$rpc\"" \
            "rpc_public_addr = \"127.0.0.1:$rpc\"" "rpc_secret = \"$secret\"" '[s3_api]' 's3_region = "garage"' \
            "api_bind_addr = \"127.0.0.1:$s3\"" 'root_domain = ".s3.garage.localhost"' >"$g/n$i/garage.toml"
        chmod 600 "$g/n$i/garage.toml"
        [[ $i == 0 ]] && export AWS_ENDPOINT_URL=http://127.0.0.1:$s3
        "${GARAGE_TASKSET[@]}" garage -c "$g/n$i/garage.toml" server >"$g/n$i/log" 2>&1 &
        echo $! >>"$g/pids"
        disown   # killed by CLEANUP, without a "Killed" line from bash
    done
    local G=(retry garage -c "$g/n0/garage.toml")
    for ((i = 0; i < GARAGE_NODES; i++)); do
        for _ in $(seq 1 50); do
            ids[i]=$(garage -c "$g/n$i/garage.toml" node id -q 2>/dev/null) && break
            sleep 0.2
        done
        if [[ $i -gt 0 ]]; then "${G[@]}" node connect "${ids[i]}" || return 1; fi
    done
    # shellcheck disable=SC2046
    "${G[@]}" layout assign -z dc1 -c 10G $(for id in "${ids[@]}"; do echo "${id:0:16}"; done) &&
        "${G[@]}" layout apply --version 1 || return 1
    "${G[@]}" key create bench >"$g/key" || return 1
    AWS_ACCESS_KEY_ID=$(awk '/Key ID:/ { print $3 }' "$g/key")
    AWS_SECRET_ACCESS_KEY=$(awk '/Secret key:/ { print $3 }' "$g/key")
    export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION=garage AWS_DEFAULT_REGION=garage
    for b in hf-bench-holdfast hf-bench-restic; do
        "${G[@]}" bucket create "$b" && "${G[@]}" bucket allow --read --write --owner "$b" --key bench || return 1
    done
    if [[ $RTT_MS != 0 ]]; then
        local port ready
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        coproc PROXY { exec "${GARAGE_TASKSET[@]}" python3 "$SCRIPT_DIR/delay_proxy.py" "$port" "${AWS_ENDPOINT_URL#http://}" "$RTT_MS"; }
        disown "$PROXY_PID" 2>/dev/null
        echo "$PROXY_PID" >>"$g/pids"
        read -r -t 10 ready <&"${PROXY[0]}" && [[ $ready == ready ]] || return 1
        export AWS_ENDPOINT_URL=http://127.0.0.1:$port
    fi
}
if in_list holdfast_s3 || in_list restic_s3; then
    say "== starting Garage ($GARAGE_NODES node(s)) in $WORK/garage"
    if ! command -v garage >/dev/null || ! start_garage >"$LOGS/garage.log" 2>&1; then
        FAIL[holdfast_s3]="Garage did not start, see logs/garage.log"
        FAIL[restic_s3]=${FAIL[holdfast_s3]}
    fi
    CLEANUP+=('[[ -f $WORK/garage/pids ]] && xargs -r kill -9 <"$WORK/garage/pids" 2>/dev/null')
    # quickack: Garage answers without TCP_NODELAY, so a response whose body
    # is smaller than two TCP segments waits for the client's delayed ACK,
    # 40 ms. Segments are 64 KiB on loopback (1.4 KiB on a network), so here
    # every GET of about 3-128 KiB (index files, tree packs) would stall: a
    # loopback artifact that hits every S3 tool. As root, the loopback routes
    # ACK at once while the bench runs, and are put back after.
    QUICKACK_STATE="off (--no-quickack)"
    if [[ $QUICKACK == 1 ]]; then
        QUICKACK_STATE="not set (needs root and ip)"
        while read -r route; do
            # As it was (a killed earlier run may have left quickack on).
            route=$(sed -E 's/ quickack [0-9]+//' <<<"$route")
            # shellcheck disable=SC2086
            if ip route change $route table local quickack 1 2>/dev/null; then
                CLEANUP+=("ip route change $route table local")
                QUICKACK_STATE="on for the loopback routes"
            fi
        done < <(ip route show table local 2>/dev/null | grep -E '^local 127\.')
    fi
fi

say "== generating data set (scale $SCALE) into $DATA"
T0=$(date +%s.%N)
python3 "$SCRIPT_DIR/gen_dataset.py" "$DATA" --scale "$SCALE" || { say "data generation failed"; exit 1; }
GEN_SECS=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
SPARSE_APPARENT=$(stat -c %s "$DATA/sparse/big.img")
DATA_APPARENT=$(du -sb "$DATA" | cut -f1)
DATA_REAL=$((DATA_APPARENT - SPARSE_APPARENT))
DATA_FILES=$(find "$DATA" -type f | wc -l)
say "  $(mib "$DATA_REAL") MiB in $DATA_FILES files + sparse file of $(mib "$SPARSE_APPARENT") MiB apparent (${GEN_SECS}s)"

say "== init"
for t in "${TOOL_LIST[@]}"; do
    [[ $t == tar ]] && continue
    alive "$t" || { say "  $t: skipped (${FAIL[$t]})"; continue; }
    timed "$t" init "${t}_init"
done

# --------------------------------------------------------------------------
# phases
# --------------------------------------------------------------------------

say "== phase 1: first backup"
for t in "${TOOL_LIST[@]}"; do
    alive "$t" || continue
    timed "$t" backup1 "${t}_backup" 1 || continue
    if [[ $t == tar ]]; then
        R[tar.size1]=$(cat "$STATE/tar.size")
    else
        R[$t.size1]=$(repo_bytes "$t")
        LAST[$t]=1
    fi
    say "  $t repository: $(mib "${R[$t.size1]}") MiB"
done

say "== mutating data set"
python3 "$SCRIPT_DIR/gen_dataset.py" "$DATA" --mutate || { say "mutation failed"; exit 1; }
LAST_DELETE=$(date +%s)

for phase in 2 3; do
    [[ $phase == 2 ]] && say "== phase 2: backup after mutation"
    [[ $phase == 3 ]] && say "== phase 3: backup with nothing changed"
    for t in "${TOOL_LIST[@]}"; do
        [[ $t == tar ]] && continue
        alive "$t" || continue
        timed "$t" "backup$phase" "${t}_backup" "$phase" || continue
        R[$t.size$phase]=$(repo_bytes "$t")
        now=${R[$t.size$phase]} before=${R[$t.size$((phase - 1))]}
        R[$t.added$phase]=$((now - before))
        LAST[$t]=$phase
        say "  $t added $(mib "${R[$t.added$phase]}") MiB"
    done
done

# Restores go onto WORK's disk by default, each right after the previous
# restore was deleted (a few tens of thousands of files): where and when users
# restore, and where ext4's reuse of freed inodes (see above) costs the most.
# The tar baseline restores first, after an untimed restore and delete of its
# own, so every tool starts in the same state. --restore-to tmpfs: a tmpfs.
RESTORE_FS=disk
if [[ $RESTORE_TO == tmpfs ]]; then
    mount -t tmpfs -o size=8g holdfast-bench "$RESTORE" || { say "cannot mount a tmpfs (root needed)"; exit 1; }
    RESTORE_FS=tmpfs
    CLEANUP+=('umount "$RESTORE" 2>/dev/null')
fi
PHASE4=()
for t in "${TOOL_LIST[@]}"; do [[ $t == tar ]] && PHASE4=(tar "${PHASE4[@]}") || PHASE4+=("$t"); done
if [[ $RESTORE_FS == disk && ${PHASE4[0]:-} == tar && -z ${FAIL[tar]:-} ]]; then
    mkdir -p "$RESTORE/prime" && tar_restore "$RESTORE/prime" && rm -rf "$RESTORE/prime"
fi
say "== phase 4: restore latest snapshot (into $RESTORE_FS)"
for t in "${PHASE4[@]}"; do
    if [[ $t == tar ]]; then alive tar || continue; else [[ -n ${LAST[$t]:-} ]] || continue; fi
    target=$RESTORE/$t
    mkdir -p "$target"
    if timed "$t" restore "${t}_restore" "$target" "${LAST[$t]:-1}"; then
        img=$(find "$target" -path '*/sparse/big.img' -type f -print -quit)
        if [[ -z $img ]]; then
            R[$t.verified]="sparse/big.img missing"
        else
            root=$(dirname "$(dirname "$img")")
            R[$t.sparse_kib]=$(du -k "$img" | cut -f1)
            if [[ $t == tar ]]; then
                R[$t.verified]="phase 1 data, not compared (the baseline)"
            else
                R[$t.verified]=$(verify_restore "$root" "$t")
                [[ ${LAST[$t]} == 3 ]] || R[$t.verified]+=" (phase ${LAST[$t]} snapshot)"
            fi
        fi
        say "  $t big.img allocated: ${R[$t.sparse_kib]:-?} KiB, verify: ${R[$t.verified]}"
    fi
    rm -rf "$target"
done
[[ $RESTORE_FS == tmpfs ]] && umount "$RESTORE"

# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

# cell TOOL KEY [mib [DECIMALS]]: value, "failed", or "-" where the column does not apply.
cell() {
    local v=${R[$1.$2]:-}
    if [[ -n $v ]]; then
        [[ ${3:-} == mib ]] && v=$(mib "$v" "${4:-1}")
        printf '%s' "$v"
    elif [[ $1 == tar && $2 != backup1.* && $2 != size1 ]]; then
        printf -- '-'
    else
        printf 'failed'
    fi
}

RESULTS=$WORK/results.md
{
    echo "# holdfast benchmark results"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), host: $(nproc) CPUs" \
        "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))," \
        "$(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
    echo "- nproc: $(nproc)"
    echo "- data set: scale $SCALE, $(mib "$DATA_REAL") MiB in $DATA_FILES files, plus" \
        "sparse/big.img ($(mib "$SPARSE_APPARENT") MiB apparent, ~1 MiB data);" \
        "generated in ${GEN_SECS}s"
    echo "- page cache warm for every step (not dropped); restores into $RESTORE_FS"
    if in_list holdfast_s3 || in_list restic_s3; then
        echo "- CPU split: $CPU_SPLIT"
        [[ $RTT_MS != 0 ]] && echo "- S3 requests through bench/delay_proxy.py: $RTT_MS ms round trip added"
    fi
    [[ -n $HOLDFAST_BENCH_EXTRA_INIT_ARGS ]] &&
        echo "- holdfast init extra args: \`$HOLDFAST_BENCH_EXTRA_INIT_ARGS\`"
    echo "- versions:"
    for t in "${TOOL_LIST[@]}"; do
        v=$(tool_version "$t")
        [[ -n $v ]] && echo "  - $t: $v"
    done
    echo
    echo "| tool | backup 1 wall s | backup 1 CPU s | backup 1 peak RSS MiB | repo MiB |" \
        "backup 2 wall s | backup 2 added MiB | backup 3 (unchanged) wall s |" \
        "backup 3 added MiB | restore wall s | restore peak RSS MiB |" \
        "big.img allocated KiB | restore verified |"
    echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
    for t in "${TOOL_LIST[@]}"; do
        size1=$(cell "$t" size1 mib)
        [[ $t == tar && -n ${R[tar.size1]:-} ]] && size1="($size1)"
        echo "| $t | $(cell "$t" backup1.wall) | $(cell "$t" backup1.cpu) |" \
            "$(cell "$t" backup1.rss) | $size1 | $(cell "$t" backup2.wall) |" \
            "$(cell "$t" added2 mib 2) | $(cell "$t" backup3.wall) | $(cell "$t" added3 mib 2) |" \
            "$(cell "$t" restore.wall) | $(cell "$t" restore.rss) |" \
            "$(cell "$t" sparse_kib) | $(cell "$t" verified) |"
    done
    echo
    in_list tar && echo "tar row: \`tar --sparse -cf - DATA | zstd -3 -T0\`; the repo" \
        "column shows the compressed stream size, for reference."
    for t in "${TOOL_LIST[@]}"; do
        [[ $t == *_s3 && -n ${R[$t.restore.server_cpu]:-} ]] || continue
        server=Garage; [[ $RTT_MS != 0 ]] && server="Garage and the delay proxy"
        echo "- $t: $server used ${R[$t.backup1.server_cpu]:-?} / ${R[$t.backup2.server_cpu]:-?} /" \
            "${R[$t.backup3.server_cpu]:-?} / ${R[$t.restore.server_cpu]:-?} s of CPU during backup 1 / 2 / 3 /" \
            "restore."
    done
    [[ -n ${QUICKACK_STATE:-} ]] && echo "- loopback quickack (against Garage's 40 ms delayed-ACK stalls): $QUICKACK_STATE"
    for t in "${TOOL_LIST[@]}"; do
        [[ -n ${FAIL[$t]:-} ]] && echo "- **$t**: ${FAIL[$t]}"
    done
    echo
    echo "Total benchmark time: $(($(date +%s) - T_START)) s. Logs: $LOGS"
} >"$RESULTS"

{
    echo "tool,key,value"
    for k in $(printf '%s\n' "${!R[@]}" | sort); do
        echo "${k%%.*},${k#*.},\"${R[$k]}\""
    done
} >"$WORK/results.csv"

echo
cat "$RESULTS"
