#!/usr/bin/env bash
# Installs everything chaarfm-super needs to build and run on a fresh Debian machine with
# Rust and Python 3 + pip. Idempotent: each step checks before it acts.
#   - cmake: builds libsamplerate (samplerate crate) and libopus (opusic-sys) from source.
#   - systemd (for systemd-analyze): the tests verify the service units it generates.
#   - ffmpeg: the formats tests make their inputs with it (the product never needs it).
#   - chromium: a test loads the status page (`GET /`) headless (the product never needs it).
#   - ONNX Runtime: the shared library from the `onnxruntime` wheel on PyPI, unpacked into
#     .deps/onnxruntime/ (.cargo/config.toml points ORT_DYLIB_PATH there for cargo), and
#     the oldest release a bundle ships into .deps/onnxruntime-oldest/ (for a test).
#   - yt-dlp[default] and deno (the JavaScript runtime yt-dlp needs for YouTube since
#     late 2025), for the server mode, in a private venv at .deps/venv.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
deps="$root/.deps"
ort_version="${ORT_VERSION:-1.32.0}"
mkdir -p "$deps"

say() { printf 'setup: %s\n' "$*" >&2; }

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
# systemd-analyze: the tests verify the generated service units with it.
if [ "$(uname -s)" = Linux ]; then
  command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
  # For the tests only: they encode corpus audio in every format, and exercise the
  # decoder's ffmpeg fallback. The product never requires ffmpeg.
  command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
  # For the tests only: the status page is loaded in headless Chromium.
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${need_apt[*]} with apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    say "missing ${need_apt[*]}: install them with your package manager (e.g. sudo apt-get install ${need_apt[*]}) and run again"
    exit 1
  fi
fi

# One name on every platform (dlopen and LoadLibrary take any file name), so that
# .cargo/config.toml can name it.
lib=libonnxruntime.so
# fetch_ort VERSION DIR: the ONNX Runtime library of that wheel, with its licence and
# notices (they travel with it into the release bundle), as DIR/$lib.
fetch_ort() {
  local version=$1 dir=$2
  if [ -f "$dir/$lib" ] && [ -f "$dir/LICENSE" ] && [ "$(cat "$dir/VERSION" 2>/dev/null)" = "$version" ]; then
    return
  fi
  say "fetching the onnxruntime $version wheel from PyPI"
  local tmp; tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "onnxruntime==$version"
  mkdir -p "$dir"
  python3 - "$tmp" "$dir" "$lib" <<'PY'
import glob, os, sys, zipfile
src, dst, name = sys.argv[1:]
wheel = glob.glob(os.path.join(src, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    libs = [n for n in z.namelist() if "/capi/" in n and os.path.basename(n).startswith(("libonnxruntime.", "onnxruntime.dll", "libonnxruntime_providers_shared"))]
    if not libs:
        sys.exit("setup: no ONNX Runtime library inside " + wheel)
    libs += [n for n in z.namelist() if n in ("onnxruntime/LICENSE", "onnxruntime/ThirdPartyNotices.txt")]
    for n in libs:
        base = os.path.basename(n)
        # The main library gets its plain name, which is what the binary looks for.
        if base.startswith("libonnxruntime.") or base == "onnxruntime.dll":
            base = name
        with z.open(n) as f, open(os.path.join(dst, base), "wb") as out:
            out.write(f.read())
PY
  echo "$version" > "$dir/VERSION"
  rm -rf "$tmp"
  say "ONNX Runtime $version in $dir/$lib"
}
fetch_ort "$ort_version" "$deps/onnxruntime"
# The oldest ONNX Runtime a bundle ships (the Intel macOS one: release.sh), for the test
# that the derived models load and give Essentia's vectors on it too.
fetch_ort "${ORT_OLDEST_VERSION:-1.23.2}" "$deps/onnxruntime-oldest"

if [ ! -x "$deps/venv/bin/yt-dlp" ] || [ ! -x "$deps/venv/bin/deno" ]; then
  say "installing yt-dlp[default] and deno into $deps/venv"
  python3 -m venv "$deps/venv"
  "$deps/venv/bin/pip" install --quiet --upgrade "yt-dlp[default]" deno
fi
