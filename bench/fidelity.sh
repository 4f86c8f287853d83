#!/usr/bin/env bash
# Fidelity of a real tree: back DIR up with holdfast and with
# `tar --xattrs --acls --selinux`, restore both onto disk, and compare each
# with the original the way an admin would: getfacl -R, getcap -r, lsattr,
# getfattr (every namespace), stat (type, mode, owner, size, mtime, link
# target) and sha256 of every file. Prints, per tool, how many lines differ.
#
#   sudo bench/fidelity.sh [--work DIR] /usr/lib
#
# Run as root (capabilities, trusted.* attributes, ownership). WORK must be
# on a disk file system with xattrs and flags (ext4, xfs), not a tmpfs.
set -euo pipefail
cd "$(dirname "$0")/.."

work=/var/tmp/holdfast-fidelity
while [ $# -gt 1 ]; do
    case "$1" in
        --work) work=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
src=${1:?usage: bench/fidelity.sh [--work DIR] DIR}
src=$(realpath "$src")
bin=target/release/holdfast
[ -x "$bin" ] || cargo build --release --locked

rm -rf "$work"
mkdir -p "$work"
export HOLDFAST_PASSPHRASE=fidelity HOLDFAST_CACHE_DIR="$work/cache"
repo="$work/repo"

describe() { # DIR -> one file per tool under $2
    local dir=$1 out=$2
    mkdir -p "$out"
    (
        cd "$dir"
        getfacl -R -p -n . 2>/dev/null | awk 'BEGIN{RS=""} {gsub(/\n/," | "); print}' | sort >"$out/getfacl"
        getcap -r . 2>/dev/null | sort >"$out/getcap"
        # `I` (indexed directory) and `e` (extents) are ext4's layout, not
        # attributes anyone sets (like a directory's size): masked.
        find . \( -type f -o -type d \) -print0 | xargs -0 -r lsattr -d 2>/dev/null |
            sed 's/^\(.\{11\}\)I/\1-/; s/^\(.\{14\}\)e/\1-/' | sort >"$out/lsattr"
        getfattr -R -h -d -m - -e hex . 2>/dev/null | awk 'BEGIN{RS=""} {gsub(/\n/," | "); print}' | sort >"$out/getfattr"
        find . -type d -printf '%p %y %m %U %G %T@\n' -o -printf '%p %y %m %U %G %s %T@ %l\n' | sort >"$out/stat"
        find . -type f -print0 | xargs -0 -r sha256sum | sort >"$out/sha256"
    )
}

echo "== describing $src"
describe "$src" "$work/want"

echo "== holdfast: backup, restore"
"$bin" --repo "$repo" init >/dev/null
t0=$(date +%s.%N)
"$bin" --repo "$repo" backup "$src" >/dev/null
t1=$(date +%s.%N)
"$bin" --repo "$repo" restore latest --to "$work/hf" >/dev/null || echo "(holdfast restore exit $?: see above)"
t2=$(date +%s.%N)
describe "$work/hf$src" "$work/hf.got"

echo "== tar --xattrs --acls --selinux: create, extract"
mkdir -p "$work/tar"
t3=$(date +%s.%N)
tar --xattrs --xattrs-include='*' --acls --selinux -C "$src" -cf - . | zstd -q -3 -T0 >"$work/tree.tar.zst"
t4=$(date +%s.%N)
zstd -dc "$work/tree.tar.zst" | tar --xattrs --xattrs-include='*' --acls --selinux -C "$work/tar" -xpf -
t5=$(date +%s.%N)
describe "$work/tar" "$work/tar.got"

printf '\n%-10s %10s %16s %16s\n' tool lines "holdfast differs" "tar differs"
for what in getfacl getcap lsattr getfattr stat sha256; do
    n=$(wc -l <"$work/want/$what")
    hf=$(comm -3 "$work/want/$what" "$work/hf.got/$what" | wc -l)
    tr=$(comm -3 "$work/want/$what" "$work/tar.got/$what" | wc -l)
    printf '%-10s %10s %16s %16s\n' "$what" "$n" "$hf" "$tr"
done
printf '\nholdfast: backup %.1f s, restore %.1f s; tar|zstd: create %.1f s, extract %.1f s\n' \
    "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "$(echo "$t4 - $t3" | bc)" "$(echo "$t5 - $t4" | bc)"
echo "differences: comm -3 $work/want/TOOL $work/hf.got/TOOL"
