#!/usr/bin/env bash
# Installs s3s-fs, the S3-compatible server that the object-storage tests
# (crates/blob/tests/s3.rs) start on loopback, into ~/.cargo/bin. It checks
# SigV4 signatures (Authorization headers and pre-signed query strings with
# their expiry) and the x-amz-checksum-* digests of puts and multipart parts.
#
# Pinned to 0.17.0: older releases store an object before checking its
# checksum (a rejected upload stays visible) and skip part checksums. 0.17.0
# declares rust-version 1.96 but builds and runs with Rust 1.95, hence
# --ignore-rust-version; --locked builds it with its own Cargo.lock.
# About 5 minutes on 2 cores; a no-op once the right version is installed.
set -euo pipefail

VERSION=0.17.0
BIN="${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"

if [ -x "$BIN" ] && [ "$("$BIN" --version 2>/dev/null)" = "s3s-fs $VERSION" ]; then
  exit 0
fi
echo "installing s3s-fs $VERSION (S3 test server) into $(dirname "$BIN")" >&2
cargo install s3s-fs --version "=$VERSION" --features binary --locked --ignore-rust-version --force
"$BIN" --version
