#!/usr/bin/env bash
# The test command (README): set-up, build, every test of the workspace, in release mode
# (one profile, so tests, benchmarks and the binary share target/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Fault injection (test-only) is compiled in for the pool tests.
cargo build --release --workspace --locked --features chaarfm-super/fault-injection
cargo test --release --workspace --locked --features chaarfm-super/fault-injection
