#!/usr/bin/env bash
# Installs everything chaarfm-super needs to build and run on a fresh Debian machine with
# Rust and Python 3 + pip. Idempotent: each step checks before it acts.
#   - cmake: builds libsamplerate (samplerate crate) and libopus (opusic-sys) from source.
#   - systemd (for systemd-analyze): the tests verify the service units it generates.
#   - ffmpeg: the formats tests make their inputs with it (the product never needs it).
#   - chromium: a test loads the status page (`GET /`) headless (the product never needs it).
#   - ONNX Runtime: the shared library from the `onnxruntime` wheel on PyPI, unpacked into
#     .deps/onnxruntime/ (.cargo/config.toml points ORT_DYLIB_PATH there for cargo).
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
if [ ! -f "$deps/onnxruntime/$lib" ] || [ ! -f "$deps/onnxruntime/LICENSE" ] || [ "$(cat "$deps/onnxruntime/VERSION" 2>/dev/null)" != "$ort_version" ]; then
  say "fetching the onnxruntime $ort_version wheel from PyPI"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "onnxruntime==$ort_version"
  mkdir -p "$deps/onnxruntime"
  python3 - "$tmp" "$deps/onnxruntime" "$lib" <<'PY'
import glob, os, sys, zipfile
src, dst, name = sys.argv[1:]
wheel = glob.glob(os.path.join(src, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    libs = [n for n in z.namelist() if "/capi/" in n and os.path.basename(n).startswith(("libonnxruntime.", "onnxruntime.dll", "libonnxruntime_providers_shared"))]
    if not libs:
        sys.exit("setup: no ONNX Runtime library inside " + wheel)
    # Its licence and notices travel with it into the release bundle.
    libs += [n for n in z.namelist() if n in ("onnxruntime/LICENSE", "onnxruntime/ThirdPartyNotices.txt")]
    for n in libs:
        base = os.path.basename(n)
        # The main library gets its plain name, which is what the binary looks for.
        if base.startswith("libonnxruntime.") or base == "onnxruntime.dll":
            base = name
        with z.open(n) as f, open(os.path.join(dst, base), "wb") as out:
            out.write(f.read())
PY
  echo "$ort_version" > "$deps/onnxruntime/VERSION"
  say "ONNX Runtime $ort_version in $deps/onnxruntime/$lib"
fi

if [ ! -x "$deps/venv/bin/yt-dlp" ] || [ ! -x "$deps/venv/bin/deno" ]; then
  say "installing yt-dlp[default] and deno into $deps/venv"
  python3 -m venv "$deps/venv"
  "$deps/venv/bin/pip" install --quiet --upgrade "yt-dlp[default]" deno
fi
