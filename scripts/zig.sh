# Sourced: puts cargo-zigbuild and zig (both from PyPI, pinned) on PATH, from a private
# venv at .deps/zig, installing them the first time. Used by release.sh and
# check-targets.sh: zig links for glibc 2.28 and cross-compiles the C code (libopus,
# libsamplerate) for Windows and macOS.
zig_venv="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.deps/zig"
if [ ! -x "$zig_venv/bin/cargo-zigbuild" ]; then
  printf 'zig: installing cargo-zigbuild and zig (PyPI) into %s\n' "$zig_venv" >&2
  python3 -m venv "$zig_venv"
  "$zig_venv/bin/pip" install --quiet "cargo-zigbuild==0.24.1" "ziglang==0.17.1"
fi
export PATH="$zig_venv/bin:$PATH"
