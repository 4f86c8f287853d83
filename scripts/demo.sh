#!/usr/bin/env bash
# The main command: build holdfast, then back up a sample directory into a
# local repository under ./demo, list the snapshot, check the repository and
# restore it. Safe to run again: each run adds a snapshot.
# The passphrase below is for this demo only; never put a real one in a script.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
hf=target/release/holdfast
export HOLDFAST_PASSPHRASE=demo-only-passphrase
mkdir -p demo/sample/docs demo/sample/data
[ -f demo/sample/docs/readme.txt ] || echo "holdfast demo file" > demo/sample/docs/readme.txt
date -u +"run at %FT%TZ" >> demo/sample/data/runs.log
[ -d demo/repo ] || $hf --repo demo/repo init
$hf --repo demo/repo backup --tag demo demo/sample
$hf --repo demo/repo snapshots
$hf --repo demo/repo check
rm -rf demo/restored
$hf --repo demo/repo restore latest --to demo/restored
echo "restored into demo/restored$(cd demo/sample && pwd)"
