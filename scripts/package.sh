#!/usr/bin/env bash
# Makes the Debian package: target/debian/holdfast_<version>-1_<arch>.deb.
#
# Usage: scripts/package.sh [--no-build] [--profile NAME] [--output DIR]
#
# Builds holdfast (release profile unless told), generates its man pages and
# shell completions from the command-line definitions (`holdfast generate`),
# then runs `cargo deb` (cargo-deb: $auto dependencies through
# dpkg-shlibdeps, conffiles, md5sums, stripping; `cargo install cargo-deb
# --locked` once). Assets are listed in Cargo.toml's [package.metadata.deb].
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=1
PROFILE=release
OUTPUT=target/debian
while [ $# -gt 0 ]; do
    case $1 in
        --no-build) BUILD=0; shift ;;
        --profile) PROFILE=$2; shift 2 ;;
        --output) OUTPUT=$2; shift 2 ;;
        *) echo "usage: scripts/package.sh [--no-build] [--profile NAME] [--output DIR]" >&2; exit 2 ;;
    esac
done
command -v cargo-deb >/dev/null 2>&1 || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb" ] || {
    echo "cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 2; }
command -v dpkg-shlibdeps >/dev/null 2>&1 || {
    echo "dpkg-shlibdeps is missing: apt-get install dpkg-dev" >&2; exit 2; }

[ "$PROFILE" = dev ] && dir=debug || dir=$PROFILE
[ "$BUILD" = 1 ] && cargo build --locked --profile "$PROFILE" --bin holdfast
bin=target/$dir/holdfast

assets=target/assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$bin" generate man "$assets/man"
gzip -9n "$assets"/man/*.1
"$bin" generate completions bash >"$assets/completions/holdfast"
"$bin" generate completions zsh >"$assets/completions/_holdfast"
"$bin" generate completions fish >"$assets/completions/holdfast.fish"

mkdir -p "$OUTPUT"
cargo deb --no-build --locked --profile "$PROFILE" --output "$OUTPUT"
