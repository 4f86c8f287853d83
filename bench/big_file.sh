#!/usr/bin/env bash
# Big-file throughput: a first backup of one file of random data and of one
# of compressible text (GIB GiB each), by each tool in one run, beside
# `zstd -3 -T0` and `cp` of the same file onto the same disk. Wall seconds,
# CPU-seconds (user + system) and MiB/s per step; the file is read once
# before, so every tool reads it from the page cache.
#
#   bench/big_file.sh [--gib N] [--tools holdfast,restic,borg,bupstash,rustic] [--work DIR]
#
# Defaults: 1 GiB, every tool that is installed, WORK=/var/tmp/hf-bigfile
# (ext4 here). A key unlock (argon2, ~0.13 s) is in holdfast's figure.
# Then `examples/stage_costs` prints holdfast's CPU-seconds per GiB by stage.
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_ROOT=$(dirname "$SCRIPT_DIR")
GIB=1 TOOLS=holdfast,restic,borg,bupstash,rustic WORK=/var/tmp/hf-bigfile
while [[ $# -gt 0 ]]; do
    case $1 in
        --gib) GIB=$2; shift 2 ;;
        --tools) TOOLS=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
HOLDFAST_BIN=${HOLDFAST_BIN:-$REPO_ROOT/target/release/holdfast}
DATA=$WORK/data REPOS=$WORK/repos LOGS=$WORK/logs
source "$SCRIPT_DIR/lib.sh"
tools_env
rm -rf "$REPOS" "$LOGS" "$WORK/cache" "$WORK/bupstash.key"
mkdir -p "$DATA" "$REPOS" "$LOGS" "$WORK/cache"

# The two files: random bytes, and text of words (zstd -3 keeps about a third).
if [[ ! -f $DATA/random-$GIB ]]; then
    head -c "$((GIB << 30))" /dev/urandom >"$DATA/random-$GIB"
fi
if [[ ! -f $DATA/text-$GIB ]]; then
    python3 - "$DATA/text-$GIB" "$((GIB << 30))" <<'EOF'
import random, sys
path, size = sys.argv[1], int(sys.argv[2])
rng = random.Random(11)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10))) for _ in range(20000)]
with open(path, "wb") as f:
    written = 0
    while written < size:
        block = b"\n".join(b"%d %s" % (rng.randrange(10**9), b" ".join(rng.choices(words, k=12))) for _ in range(20000))
        block = block[: size - written]
        f.write(block)
        written += len(block)
EOF
fi

hf() { "$HOLDFAST_BIN" --repo "$REPOS/holdfast-$KIND" "$@"; }
rc() { restic --repo "$REPOS/restic-$KIND" "$@"; }
ru() { rustic --no-progress -r "$REPOS/rustic-$KIND" "$@"; }
init() {
    case $1 in
        holdfast) hf init ;;
        restic) rc init --repository-version 2 ;;
        rustic) ru init ;;
        borg) borg init --encryption repokey-blake2 "$REPOS/borg-$KIND" ;;
        bupstash) rm -f "$BUPSTASH_KEY" && bupstash new-key -o "$BUPSTASH_KEY" && bupstash init -r "$REPOS/bupstash-$KIND" ;;
        *) true ;;
    esac
}
backup() {
    case $1 in
        holdfast) hf backup "$FILE" ;;
        restic) rc backup --host bench "$FILE" ;;
        rustic) ru backup --host bench "$FILE" ;;
        borg) borg create --compression zstd,3 "$REPOS/borg-$KIND::b1" "$FILE" ;;
        bupstash) bupstash put -r "$REPOS/bupstash-$KIND" --no-progress "$FILE" ;;
        zstd) zstd -q -3 -T0 -f -o "$REPOS/zstd-$KIND.zst" "$FILE" ;;
        cp) cp "$FILE" "$REPOS/cp-$KIND" ;;
    esac
}
export -f hf rc ru init backup
export HOLDFAST_BIN REPOS KIND FILE

# "wall cpu MiB/s" of one step, or "failed".
timed() {
    local log=$1; shift
    if /usr/bin/time -f "%e %U %S" -o "$log.time" bash -c "$*" >"$log.log" 2>&1; then
        awk -v mib=$((GIB * 1024)) '{ printf "%.2f s, %.2f CPU-s, %d MiB/s", $1, $2 + $3, mib / ($1 > 0 ? $1 : 0.01) }' "$log.time"
    else
        echo "failed"
    fi
}

echo "| tool | random ${GIB} GiB | stored | text ${GIB} GiB | stored |"
echo "|---|---|---|---|---|"
IFS=, read -ra LIST <<<"zstd,cp,$TOOLS"
for tool in "${LIST[@]}"; do
    case $tool in holdfast) [[ -x $HOLDFAST_BIN ]] ;; zstd | cp) true ;; *) command -v "$tool" >/dev/null ;; esac || {
        echo "| $tool | not installed | | | |"
        continue
    }
    row="| $tool"
    for KIND in random text; do
        FILE=$DATA/$KIND-$GIB
        export KIND FILE
        cat "$FILE" >/dev/null
        init "$tool" >"$LOGS/$tool.$KIND.init.log" 2>&1 || { row+=" | init failed | "; continue; }
        sync
        row+=" | $(timed "$LOGS/$tool.$KIND" "backup $tool")"
        sync
        row+=" | $(du -sm "$REPOS"/"$tool"-"$KIND"* 2>/dev/null | awk '{ s += $1 } END { print s " MiB" }')"
        rm -rf "$REPOS"/"$tool"-"$KIND"*
    done
    echo "$row |"
done

if [[ -x $REPO_ROOT/target/release/examples/stage_costs ]]; then
    for KIND in random text; do
        "$REPO_ROOT/target/release/examples/stage_costs" "$DATA/$KIND-$GIB"
    done
fi
