#!/usr/bin/env bash
# Type-checks and lints the Windows and macOS builds (CI runs it), so a change cannot
# break the code behind cfg(windows) or cfg(target_os = "macos") unnoticed. The Windows
# build also runs, under wine (scripts/test-windows.sh); macOS' link needs Apple's SDK.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/zig.sh
targets=(x86_64-pc-windows-gnu aarch64-apple-darwin)
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t" >&2
done
for t in "${targets[@]}"; do
  echo "check-targets: $t" >&2
  cargo-zigbuild clippy --release --locked --workspace --all-targets --target "$t" -- -D warnings
done
