#!/usr/bin/env bash
# The main command: build holdfast, then run the `demo` job of
# jobs.example.toml (an SQLite database and a directory of files, dumped and
# backed up as one snapshot into demo/repo). Run it again for more snapshots.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
hf="target/release/holdfast --config jobs.example.toml"
# The demo repository's passphrase is in jobs.example.toml (demo only).
[ -f demo/repo/holdfast-repository ] || $hf --repo demo init
$hf run demo
$hf snapshots demo
cat <<MSG

Next:
  $hf ls --repo demo latest
  $hf restore --repo demo latest --to /tmp/demo-restore
  $hf check --repo demo --read-data
MSG
