#!/usr/bin/env bash
# Off-site over SSH: holdfast to an ssh:// repository (holdfast serve on the
# other end) against the same with a local repository and against borg over
# SSH (borg serve), in one run, through a delay relay that adds a round trip.
#
# Usage:
#   bench/ssh.sh [--scale S] [--rtt MS] [--work DIR] [--no-build]
#
#   --scale S   the bench data set's size (bench/gen_dataset.py; 1.0 = ~0.46 GB; default 1.0)
#   --rtt MS    round trip added by bench/delay_proxy.py between ssh and sshd (default 20)
#   --work DIR  scratch directory (default ${TMPDIR:-/tmp}/holdfast-ssh); wiped
#
# A private sshd on a loopback port (its own host key and authorized_keys; no
# sftp subsystem) serves both tools; the relay sits between ssh and it. Measured
# (wall seconds, CPU seconds and peak RSS MiB of the client and its ssh by
# /usr/bin/time, MiB that crossed the relay both ways): first backup,
# unchanged backup (one small file touched), and a full restore onto a freshly
# made ext4 (a loop-mounted image in WORK, as a user restores onto a disk).
# Targets (#21): ssh <= 1.3x local on first backup and restore; faster than
# borg over SSH on every step. Needs root (sshd, loop mounts).
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=1.0
RTT=20
WORK=${TMPDIR:-/tmp}/holdfast-ssh
BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
        --scale) SCALE=$2; shift 2 ;;
        --rtt) RTT=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$BUILD" = 1 ] && cargo build --release --locked -q
HF=${HOLDFAST_BIN:-$PWD/target/release/holdfast}
command -v borg >/dev/null || { echo "borg is missing: apt-get install borgbackup" >&2; exit 2; }
[ -x /usr/sbin/sshd ] || { echo "sshd is missing: apt-get install openssh-server" >&2; exit 2; }

export HOLDFAST_PASSPHRASE=bench BORG_PASSPHRASE=bench
export HOLDFAST_CACHE_DIR=$WORK/cache BORG_BASE_DIR=$WORK/cache/borg
rm -rf "$WORK/repos" "$WORK/cache" "$WORK/out" "$WORK/ssh"
mkdir -p "$WORK/repos" "$WORK/cache" "$WORK/out" "$WORK/ssh"
DATA=$WORK/data
[ -d "$DATA" ] || python3 bench/gen_dataset.py "$DATA" --scale "$SCALE" -q

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
S=$WORK/ssh
ssh-keygen -q -t ed25519 -N "" -f "$S/host" && ssh-keygen -q -t ed25519 -N "" -f "$S/id"
cp "$S/id.pub" "$S/authorized_keys"
SSHD_PORT=$(free_port)
cat >"$S/sshd_config" <<EOF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $S/host
PidFile $S/sshd.pid
AuthorizedKeysFile $S/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
EOF
mkdir -p /run/sshd
/usr/sbin/sshd -f "$S/sshd_config"
PORT=$(free_port)
coproc PROXY { exec python3 bench/delay_proxy.py "$PORT" "127.0.0.1:$SSHD_PORT" "$RTT" "$WORK/proxy.log"; }
read -r -t 10 ready <&"${PROXY[0]}" && [ "$ready" = ready ]
trap 'kill $(cat "$S/sshd.pid") $PROXY_PID 2>/dev/null || true; umount "$WORK/out/disk" 2>/dev/null || true' EXIT
echo "[127.0.0.1]:$PORT $(cat "$S/host.pub")" >"$S/known_hosts"
SSH_OPTS="-p $PORT -i $S/id -o IdentitiesOnly=yes -o UserKnownHostsFile=$S/known_hosts -o BatchMode=yes"
export BORG_RSH="ssh $SSH_OPTS"

cat >"$WORK/holdfast.toml" <<EOF
[repositories.local]
path = "$WORK/repos/hf-local"

[repositories.box]
url = "ssh://127.0.0.1:$PORT$WORK/repos/hf-ssh"
identity_file = "$S/id"
known_hosts_file = "$S/known_hosts"
remote_command = "$HF serve"
EOF
HFC=("$HF" --config "$WORK/holdfast.toml" --no-progress)
BORG_URL=ssh://root@127.0.0.1:$PORT$WORK/repos/borg

measure() { # name, command...: prints "seconds rss_mib cpu_seconds mib_over_the_link"
    local name=$1; shift
    : >"$WORK/proxy.log"
    /usr/bin/time -f "%e %M %U %S" -o "$WORK/time" "$@" >"$WORK/out/$name.stdout" 2>"$WORK/out/$name.stderr" || {
        echo "$name failed:" >&2; tail -5 "$WORK/out/$name.stderr" >&2; echo "- - - -"; return; }
    sleep 0.5 # the relay logs a connection once both ends closed
    local moved
    moved=$(awk '{s += $1 + $2} END {printf "%.0f", s / 1048576}' "$WORK/proxy.log")
    awk -v moved="$moved" '{printf "%s %d %.1f %s\n", $1, $2/1024, $3+$4, moved}' "$WORK/time"
}
# fresh_disk NAME SIZE / drop_disk NAME: a new, empty ext4 at WORK/out/NAME.
source bench/lib.sh
touch_one() { echo "edit $1" >>"$(find "$DATA" -type f -name '*.txt' | sort | head -n1)"; }

"${HFC[@]}" --repo local init >/dev/null 2>&1
"${HFC[@]}" --repo box init >/dev/null 2>&1
borg init -e repokey-blake2 "$BORG_URL" >/dev/null 2>&1

declare -A R
# The floor: ssh alone moving what a backup adds and a restore reads (the
# local repository's bytes) over one connection, and opening one.
"${HFC[@]}" --repo local backup "$DATA" >/dev/null 2>&1
SSH=(ssh $SSH_OPTS root@127.0.0.1)
R[ssh,1]=$(measure ssh-1 bash -c "tar -C '$WORK/repos/hf-local' -cf - . | ${SSH[*]} 'cat >/dev/null'")
R[ssh,2]=$(measure ssh-2 "${SSH[@]}" true)
R[ssh,r]=$(measure ssh-r bash -c "${SSH[*]} 'tar -C $WORK/repos/hf-local -cf - .' >/dev/null")
rm -rf "$WORK/repos/hf-local" && "${HFC[@]}" --repo local init >/dev/null 2>&1

for tool in local box borg; do
    echo "== $tool" >&2
    case $tool in
        borg)
            R[$tool,1]=$(measure "$tool-1" borg create --compression zstd,3 "$BORG_URL::one" "$DATA")
            touch_one "$tool"
            R[$tool,2]=$(measure "$tool-2" borg create --compression zstd,3 "$BORG_URL::two" "$DATA")
            fresh_disk disk 4G
            R[$tool,r]=$(measure "$tool-r" bash -c "cd '$WORK/out/disk' && borg extract '$BORG_URL::two'")
            drop_disk disk
            ;;
        *)
            R[$tool,1]=$(measure "$tool-1" "${HFC[@]}" --repo "$tool" backup "$DATA")
            touch_one "$tool"
            R[$tool,2]=$(measure "$tool-2" "${HFC[@]}" --repo "$tool" backup "$DATA")
            fresh_disk disk 4G
            R[$tool,r]=$(measure "$tool-r" "${HFC[@]}" --repo "$tool" restore latest --to "$WORK/out/disk/r")
            drop_disk disk
            ;;
    esac
done

row() { printf "| %s | %s | %s | %s | %s | %s |\n" "$@"; }
cell() { set -- $1; echo "$1 s, $3 cpu-s, $2 MiB, $4 MiB moved"; }
ratio() { python3 -c "import sys; a, b = sys.argv[1:]; print(f'{float(a)/float(b):.2f}x' if a != '-' and b != '-' else '-')" "$1" "$2"; }
first() { set -- $1; echo "$1"; }
echo
echo "bench set scale $SCALE ($(du -sh "$DATA" | cut -f1)); ssh through a ${RTT} ms round-trip relay; restores onto a fresh ext4"
row "step" "holdfast local" "holdfast ssh://" "borg over ssh" "ssh/local" "ssh alone (1 conn.)"
row "---" "---" "---" "---" "---" "---"
for step in 1 2 r; do
    case $step in 1) name="first backup" ;; 2) name="unchanged backup (1 file edited)" ;; r) name="full restore onto ext4" ;; esac
    row "$name" "$(cell "${R[local,$step]}")" "$(cell "${R[box,$step]}")" "$(cell "${R[borg,$step]}")" \
        "$(ratio "$(first "${R[box,$step]}")" "$(first "${R[local,$step]}")")" "$(cell "${R[ssh,$step]}")"
done
