#!/usr/bin/env bash
# Big-index benchmark: a repository whose index lists CHUNKS chunks (fake
# entries written by examples/synthetic_index.rs; 20 million ≈ 10 TiB at the
# default chunk size), then the steps that must not need RAM in proportion to
# it: an unchanged backup of a small tree and the restore of one file. Time
# and peak RSS of each, plus the bytes of RAM per indexed chunk.
#
#   bench/big_index.sh [--chunks N] [--work DIR]     (default 20000000, /var/tmp/hf-bigindex)
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_ROOT=$(dirname "$SCRIPT_DIR")
CHUNKS=20000000 WORK=/var/tmp/hf-bigindex
while [[ $# -gt 0 ]]; do
    case $1 in
        --chunks) CHUNKS=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
HOLDFAST_BIN=${HOLDFAST_BIN:-$REPO_ROOT/target/release/holdfast}
SYNTH=${SYNTH_BIN:-$REPO_ROOT/target/release/examples/synthetic_index}
export HOLDFAST_PASSPHRASE=holdfast-bench-not-a-secret
rm -rf "$WORK" && mkdir -p "$WORK/src/a" "$WORK/out"
for i in $(seq 1 200); do head -c 3000 /dev/urandom >"$WORK/src/a/f$i"; done
hf() { "$HOLDFAST_BIN" --repo "$WORK/repo" "$@"; }
timed() { # timed STEP CMD...: "seconds / MiB"
    local step=$1; shift
    /usr/bin/time -f "%e %M" -o "$WORK/$step.time" "$@" >"$WORK/$step.log" 2>&1 || { echo "failed (see $WORK/$step.log)"; return; }
    awk '{ printf "%.2f s / %d MiB", $1, $2 / 1024 }' "$WORK/$step.time"
}
hf init >/dev/null
hf backup "$WORK/src" >/dev/null
small_backup=$(timed small-backup "$HOLDFAST_BIN" --repo "$WORK/repo" backup "$WORK/src")
"$SYNTH" "$WORK/repo" "$CHUNKS" >/dev/null
index_mib=$(du -sm "$WORK/repo/index" | cut -f1)
backup=$(timed backup "$HOLDFAST_BIN" --repo "$WORK/repo" backup "$WORK/src")
restore=$(timed restore "$HOLDFAST_BIN" --repo "$WORK/repo" restore latest --path "$WORK/src/a/f7" --to "$WORK/out")
cmp "$WORK/src/a/f7" "$WORK/out$WORK/src/a/f7" || echo "restored file differs" >&2
echo "| chunks indexed | index on disk | unchanged backup (before → after the fake index) | restore one file |"
echo "|---|---|---|---|"
echo "| $CHUNKS | $index_mib MiB | $small_backup → $backup | $restore |"
