#!/usr/bin/env bash
# The test command (README): set-up, build, every test of the workspace, in release mode
# (one profile, so tests, benchmarks and the binary share target/), then the release
# bundle and its check.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Fault injection (test-only) is compiled in for the pool tests.
cargo build --release --workspace --locked --features chaarfm-super/fault-injection
cargo test --release --workspace --locked --features chaarfm-super/fault-injection
# The release bundle, built for glibc 2.28 and checked as a user meets it: unpacked
# outside the checkout, run with env -i, vectors compared with Essentia's.
bash scripts/release.sh
# The Windows build under wine: every unit test, and the Windows bundle's smoke test.
bash scripts/test-windows.sh
