#!/usr/bin/env bash
# Many-file benchmark: a tree of N small files (1-4 KiB, ~100 per directory)
# backed up, backed up again unchanged, and restored onto the disk WORK is on
# (ext4 by default here), by each tool in one run. Time and peak RSS per step.
#
#   bench/many_files.sh [--files N | --path DIR] [--tools holdfast,restic,borg,bupstash,rustic,tar] [--work DIR]
#
# Defaults: 100000 files, every tool that is installed, WORK=/var/tmp/hf-many.
# --path DIR backs up an existing tree instead (a system's /usr: real file
# sizes, ACLs, capabilities, hard links), as root to read all of it. `tar` is
# tar --xattrs --acls | zstd -3 -T0 into one file, the baseline.
# The table is printed on stdout (Markdown); logs are in WORK/logs.
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_ROOT=$(dirname "$SCRIPT_DIR")
FILES=100000 TOOLS=holdfast,restic,borg,bupstash,rustic WORK=/var/tmp/hf-many GIVEN=
while [[ $# -gt 0 ]]; do
    case $1 in
        --files) FILES=$2; shift 2 ;;
        --path) GIVEN=$2; shift 2 ;;
        --tools) TOOLS=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
HOLDFAST_BIN=${HOLDFAST_BIN:-$REPO_ROOT/target/release/holdfast}
DATA=$WORK/data-$FILES REPOS=$WORK/repos RESTORE=$WORK/restore LOGS=$WORK/logs
source "$SCRIPT_DIR/lib.sh"
tools_env
export BUPSTASH_REPOSITORY=$REPOS/bupstash
rm -rf "$REPOS" "$RESTORE" "$LOGS" "$WORK/cache" "$WORK/bupstash.key" "$WORK"/bupstash.*
mkdir -p "$REPOS" "$RESTORE" "$LOGS" "$WORK/cache"

if [[ -n $GIVEN ]]; then
    DATA=$GIVEN
elif [[ ! -f $DATA/.complete ]]; then
    rm -rf "$DATA"
    echo "generating $FILES files in $DATA" >&2
    python3 - "$DATA" "$FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(4000)]
text = b" ".join(rng.choice(words) for _ in range(400000))
per_dir, made = 100, 0
while made < n:
    d = os.path.join(root, "d%03d" % (made // 10000), "e%03d" % (made // per_dir % 100))
    os.makedirs(d, exist_ok=True)
    for i in range(min(per_dir, n - made)):
        size = rng.randint(1024, 4096)
        start = rng.randrange(len(text) - size)
        with open(os.path.join(d, "f%05d.txt" % i), "wb") as f:
            f.write(b"%d " % made + text[start:start + size])
        made += 1
open(os.path.join(root, ".complete"), "w").close()
EOF
fi

hf() { "$HOLDFAST_BIN" --repo "$REPOS/holdfast" "$@"; }
rc() { restic --repo "$REPOS/restic" "$@"; }
ru() { rustic --no-progress -r "$REPOS/rustic" "$@"; }
bg() { borg "$@"; local s=$?; [[ $s -le 1 ]]; }
init() {
    case $1 in
        holdfast) hf init ;;
        restic) rc init --repository-version 2 ;;
        rustic) ru init ;;
        borg) borg init --encryption repokey-blake2 "$REPOS/borg" ;;
        bupstash) bupstash new-key -o "$BUPSTASH_KEY" && bupstash init ;;
        tar) mkdir -p "$REPOS/tar" ;;
    esac
}
TAR_FLAGS="--xattrs --xattrs-include=* --acls --selinux --numeric-owner"
backup() {
    case $1 in
        holdfast) hf backup "$DATA" ;;
        restic) rc backup --host bench "$DATA" ;;
        rustic) ru backup --host bench "$DATA" ;;
        borg) bg create --compression zstd,3 "$REPOS/borg::b$2" "$DATA" ;;
        bupstash) bupstash put --no-progress --send-log "$WORK/bupstash.sendlog" "$DATA" >"$WORK/bupstash.id" ;;
        tar) tar -cpf - $TAR_FLAGS "$DATA" | zstd -q -3 -T0 >"$REPOS/tar/b$2.tar.zst" ;;
    esac
}
restore() {
    case $1 in
        holdfast) hf restore latest --to "$2" ;;
        restic) rc restore latest --target "$2" ;;
        rustic) ru restore latest "$2" ;;
        borg) (cd "$2" && bg extract "$REPOS/borg::b2") ;;
        bupstash) bupstash get --no-progress id="$(cat "$WORK/bupstash.id")" | tar -x -C "$2" ;;
        tar) zstd -q -dc "$REPOS/tar/b1.tar.zst" | tar -xpf - $TAR_FLAGS -C "$2" ;;
    esac
}
export -f hf rc ru bg init backup restore
export HOLDFAST_BIN REPOS DATA WORK TAR_FLAGS

# timed TOOL STEP CMD...: "seconds MiB" of the step, or "failed".
timed() {
    local tool=$1 step=$2; shift 2
    if /usr/bin/time -f "%e %M" -o "$LOGS/$tool.$step.time" bash -o pipefail -c "$*" >"$LOGS/$tool.$step.log" 2>&1; then
        awk '{ printf "%.1f / %d", $1, $2 / 1024 }' "$LOGS/$tool.$step.time"
    else
        echo "failed"
    fi
}

# Every tool reads the data from the page cache: the first one in the list
# would otherwise pay for reading it from the disk.
tar -cf - "$DATA" 2>/dev/null | cat >/dev/null

echo "| tool | first backup s / MiB | stored MiB | unchanged s / MiB | restore (disk) s / MiB |"
echo "|---|---|---|---|---|"
IFS=, read -ra LIST <<<"$TOOLS"
for tool in "${LIST[@]}"; do
    case $tool in holdfast) [[ -x $HOLDFAST_BIN ]] ;; tar) command -v zstd >/dev/null ;; *) command -v "$tool" >/dev/null ;; esac || {
        echo "| $tool | not installed | | | |"
        continue
    }
    init "$tool" >"$LOGS/$tool.init.log" 2>&1 || { echo "| $tool | init failed | | | |"; continue; }
    sync
    first=$(timed "$tool" first "backup $tool 1")
    stored=$(du -sm "$REPOS/$tool" 2>/dev/null | cut -f1)
    again=$(timed "$tool" again "backup $tool 2")
    target=$RESTORE/$tool
    rm -rf "$target" && mkdir -p "$target" && sync
    back=$(timed "$tool" restore "restore $tool $target")
    rm -rf "$target"
    echo "| $tool | $first | $stored | $again | $back |"
done
