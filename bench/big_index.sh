#!/usr/bin/env bash
# Big-index benchmark: a repository whose index lists CHUNKS chunks (fake
# entries written by examples/synthetic_index.rs; 20 million ≈ 10 TiB at the
# default chunk size), then the steps that must not need RAM in proportion to
# it: an unchanged backup of a small tree and the restore of one file, with
# the index held in memory (--no-cache) and kept in the index cache. Time
# and peak RSS of each.
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
export HOLDFAST_CACHE_DIR=$WORK/cache
hf init >/dev/null
hf backup "$WORK/src" >/dev/null
small_backup=$(timed small-backup "$HOLDFAST_BIN" --repo "$WORK/repo" backup "$WORK/src")
"$SYNTH" "$WORK/repo" "$CHUNKS" >/dev/null
index_mib=$(du -sm "$WORK/repo/index" | cut -f1)
# The index held in memory (--no-cache: as before the index cache), then
# through the index cache: the run that builds it, then runs that find it.
mem_backup=$(timed mem-backup "$HOLDFAST_BIN" --no-cache --repo "$WORK/repo" backup "$WORK/src")
mem_restore=$(timed mem-restore "$HOLDFAST_BIN" --no-cache --repo "$WORK/repo" restore latest --path "$WORK/src/a/f7" --to "$WORK/out")
rm -rf "$WORK/cache" "$WORK/out" && mkdir -p "$WORK/out"
build_backup=$(timed build-backup "$HOLDFAST_BIN" --repo "$WORK/repo" backup "$WORK/src")
cache_mib=$(du -sm "$WORK/cache" | cut -f1)
backup=$(timed backup "$HOLDFAST_BIN" --repo "$WORK/repo" backup "$WORK/src")
restore=$(timed restore "$HOLDFAST_BIN" --repo "$WORK/repo" restore latest --path "$WORK/src/a/f7" --to "$WORK/out")
cmp "$WORK/src/a/f7" "$WORK/out$WORK/src/a/f7" || echo "restored file differs" >&2
echo "chunks indexed: $CHUNKS; index files: $index_mib MiB; index cache: $cache_mib MiB; unchanged backup before the fake index: $small_backup"
echo
echo "| step (s / peak RSS) | index in memory (--no-cache) | index cache: the run that builds it | index cache: later runs |"
echo "|---|---|---|---|"
echo "| unchanged backup of a small tree | $mem_backup | $build_backup | $backup |"
echo "| restore of one file | $mem_restore | — | $restore |"
