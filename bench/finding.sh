#!/usr/bin/env bash
# Finding what was lost on a long history: holdfast find / diff / mount
# against restic find / diff / mount and borg mount, in one run.
#
# Usage:
#   bench/finding.sh [--scale S] [--snapshots N] [--work DIR] [--no-build]
#
#   --scale S      the bench data set's size (bench/gen_dataset.py; 1.0 = ~0.46 GB
#                  of real data plus a sparse file; default 1.0)
#   --snapshots N  history length (default 200)
#   --work DIR     scratch directory (default ${TMPDIR:-/tmp}/holdfast-finding); wiped
#   --measure-only keep WORK's repositories (from an earlier run) and only measure
#
# The history: N backups of the data set by holdfast and restic; before each, 20
# small files are rewritten, one file `added-I.txt` is added and the one added 10
# runs earlier is deleted (so each name lives in 10 snapshots). borg keeps only the
# last state (it is measured for its mount alone).
#
# Measured (wall seconds, peak RSS MiB by /usr/bin/time):
#   find    one file name that is in 10 of the N snapshots
#   diff    the first snapshot against the last
#   mount   `cp -a` of the data set's directories (all but the sparse one) out of
#           the mount's newest snapshot onto a disk: each copy and restore onto a
#           freshly made ext4 (a loop-mounted image in WORK; ext4 that has just
#           deleted many files creates new ones several times slower, which would
#           decide the ranking by the order of the steps); `tar -cf - | cat` of the
#           same through the mount (reading alone); for comparison, a plain restore
#           of the same directories and `cp -a` from the original directories.
#           Target: mount >= 0.8x restore.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=1.0
N=200
WORK=${TMPDIR:-/tmp}/holdfast-finding
BUILD=1
MEASURE_ONLY=0
while [ $# -gt 0 ]; do
    case $1 in
        --scale) SCALE=$2; shift 2 ;;
        --snapshots) N=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --measure-only) MEASURE_ONLY=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$BUILD" = 1 ] && cargo build --release --locked -q
HF=${HOLDFAST_BIN:-$PWD/target/release/holdfast}
for tool in restic borg; do
    command -v $tool >/dev/null || { echo "$tool is missing: apt-get install restic borgbackup" >&2; exit 2; }
done

export HOLDFAST_PASSPHRASE=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
export HOLDFAST_CACHE_DIR=$WORK/cache RESTIC_CACHE_DIR=$WORK/cache/restic BORG_BASE_DIR=$WORK/cache/borg
DATA=$WORK/data
COPY_DIRS=(sql small bin dup)
rm -rf "$WORK/out" "$WORK/mnt"
mkdir -p "$WORK/out" "$WORK/mnt"
if [ "$MEASURE_ONLY" = 0 ]; then
rm -rf "$WORK/repos" "$WORK/cache"
mkdir -p "$WORK/repos" "$WORK/cache"
[ -d "$DATA" ] || python3 bench/gen_dataset.py "$DATA" --scale "$SCALE" -q

"$HF" --repo "$WORK/repos/hf" init >/dev/null 2>&1
restic -r "$WORK/repos/restic" init --repository-version 2 -q >/dev/null
borg init -e repokey-blake2 "$WORK/repos/borg" >/dev/null 2>&1

mutate() {
    python3 - "$DATA" "$1" <<'EOF'
import os, sys, random
data, i = sys.argv[1], int(sys.argv[2])
files = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(data, "small")) for f in fs)
rng = random.Random(i)
for f in rng.sample(files, min(20, len(files))):
    with open(f, "a") as fh:
        fh.write(f"edit {i}\n")
added = os.path.join(data, "small", "added")
os.makedirs(added, exist_ok=True)
with open(os.path.join(added, f"added-{i}.txt"), "w") as fh:
    fh.write(f"added in run {i}\n")
old = os.path.join(added, f"added-{i - 10}.txt")
if os.path.exists(old):
    os.remove(old)
EOF
}

echo "== history: $N snapshots" >&2
for i in $(seq 1 "$N"); do
    mutate "$i"
    "$HF" --repo "$WORK/repos/hf" --no-progress backup "$DATA" >/dev/null
    restic -r "$WORK/repos/restic" backup -q --compression auto "$DATA" >/dev/null
done
borg create --compression zstd,3 "$WORK/repos/borg::last" "$DATA" >/dev/null 2>&1
fi

measure() { # name, command...: prints "seconds rss_mib"
    local name=$1; shift
    /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" >"$WORK/out/$name.stdout" 2>"$WORK/out/$name.stderr" || {
        echo "$name failed:" >&2; tail -5 "$WORK/out/$name.stderr" >&2; echo "- -"; return; }
    awk '{printf "%s %d\n", $1, $2/1024}' "$WORK/time"
}

NAME=added-$((N / 2)).txt
HF_IDS=($("$HF" --repo "$WORK/repos/hf" snapshots --json | python3 -c 'import json,sys; print(" ".join(s["id"] for s in json.load(sys.stdin)))'))
R_IDS=($(restic -r "$WORK/repos/restic" snapshots --json | python3 -c 'import json,sys; print(" ".join(s["id"] for s in json.load(sys.stdin)))'))

echo "== find $NAME" >&2
hf_find=$(measure hf_find "$HF" --repo "$WORK/repos/hf" find "$NAME")
r_find=$(measure r_find restic -r "$WORK/repos/restic" find "$NAME")
hf_found=$(grep -c "^  " "$WORK/out/hf_find.stdout" || true)
r_found=$(grep -c "$NAME" "$WORK/out/r_find.stdout" || true)

echo "== diff first last" >&2
hf_diff=$(measure hf_diff "$HF" --repo "$WORK/repos/hf" diff "${HF_IDS[0]}" "${HF_IDS[-1]}")
r_diff=$(measure r_diff restic -r "$WORK/repos/restic" diff "${R_IDS[0]}" "${R_IDS[-1]}")

# fresh_disk NAME / drop_disk NAME: a new, empty ext4 at WORK/out/NAME.
source bench/lib.sh
# cp -a of the copy directories out of FROM onto a fresh disk: copy NAME FROM
COPY='to=$1; from=$2; shift 2; for d in "$@"; do cp -a "$from/$d" "$to/"; done'
copy() {
    fresh_disk "$1" >&2
    measure "$1" bash -c "$COPY" _ "$WORK/out/$1" "$2" "${COPY_DIRS[@]}"
    drop_disk "$1" >&2
}
# Everything read, nothing written: read NAME FROM
READ='from=$1; shift; tar -C "$from" -cf - "$@" | cat >/dev/null'
read_all() { measure "$1" bash -c "$READ" _ "$2" "${COPY_DIRS[@]}"; }
wait_for() { for _ in $(seq 1 300); do [ -e "$1" ] && return 0; sleep 0.1; done; echo "mount did not come up: $1" >&2; return 1; }

echo "== mounts" >&2
rel=${DATA#/}
mkdir -p "$WORK/mnt/hf" "$WORK/mnt/restic" "$WORK/mnt/borg"
"$HF" --repo "$WORK/repos/hf" mount "$WORK/mnt/hf" 2>"$WORK/out/hf_mount.log" & hf_pid=$!
wait_for "$WORK/mnt/hf/latest/$rel"
hf_mount=$(copy hf_mount "$WORK/mnt/hf/latest/$rel")
hf_read=$(read_all hf_read "$WORK/mnt/hf/by-id/${HF_IDS[0]:0:8}/$rel")
kill -TERM $hf_pid; wait $hf_pid || true
restic -r "$WORK/repos/restic" mount "$WORK/mnt/restic" >"$WORK/out/r_mount.log" 2>&1 & r_pid=$!
wait_for "$WORK/mnt/restic/snapshots/latest/$rel"
r_mount=$(copy r_mount "$WORK/mnt/restic/snapshots/latest/$rel")
r_read=$(read_all r_read "$WORK/mnt/restic/ids/${R_IDS[0]:0:8}/$rel")
kill -INT $r_pid; wait $r_pid || true
borg mount "$WORK/repos/borg::last" "$WORK/mnt/borg"
b_mount=$(copy b_mount "$WORK/mnt/borg/$rel")
borg umount "$WORK/mnt/borg"

echo "== restores of the same directories" >&2
hf_paths=(); for d in "${COPY_DIRS[@]}"; do hf_paths+=(--path "$DATA/$d"); done
r_paths=(); for d in "${COPY_DIRS[@]}"; do r_paths+=(--include "$DATA/$d"); done
fresh_disk hf_r
hf_restore=$(measure hf_restore "$HF" --repo "$WORK/repos/hf" --no-progress restore latest "${hf_paths[@]}" --to "$WORK/out/hf_r/r")
drop_disk hf_r
fresh_disk r_r
r_restore=$(measure r_restore restic -r "$WORK/repos/restic" restore latest "${r_paths[@]}" --target "$WORK/out/r_r")
drop_disk r_r
local_copy=$(copy local_copy "$DATA")
rm -rf "$WORK/out"

row() { printf "| %-34s | %-16s | %-16s | %-16s |\n" "$@"; }
cell() { set -- $1; echo "$1 s / $2 MiB"; }
echo
echo "$N snapshots of the bench set (scale $SCALE); find hits: holdfast $hf_found versions, restic $r_found lines"
row "step" "holdfast" "restic" "borg"
row "---" "---" "---" "---"
row "find $NAME" "$(cell "$hf_find")" "$(cell "$r_find")" "-"
row "diff first last" "$(cell "$hf_diff")" "$(cell "$r_diff")" "-"
row "cp -a out of the mount" "$(cell "$hf_mount")" "$(cell "$r_mount")" "$(cell "$b_mount")"
row "tar|cat of them through the mount" "$(cell "$hf_read")" "$(cell "$r_read")" "-"
row "restore of the same directories" "$(cell "$hf_restore")" "$(cell "$r_restore")" "-"
row "cp -a from the original directories" "$(cell "$local_copy")" "" ""
