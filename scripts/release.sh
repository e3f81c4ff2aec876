#!/usr/bin/env bash
# Makes a release bundle in dist/: the stripped binary, ONNX Runtime (from the PyPI
# `onnxruntime` wheel of the target's platform) with its licence and notices, the model
# with its manifest and licence note, the project's licences, a README and an installer
# for yt-dlp[default] + deno. The layout and lookup rules are child::layout's.
#
#   scripts/release.sh                               Linux x86_64, glibc 2.28 floor (Debian 10,
#                                                    Ubuntu 20.04, RHEL 8), the onnxruntime
#                                                    wheel's own floor (manylinux_2_28); built
#                                                    with cargo-zigbuild (PyPI), then checked
#                                                    by scripts/check-bundle.sh
#   scripts/release.sh --host                        the same with this machine's glibc
#   scripts/release.sh --target x86_64-pc-windows-gnu   a .zip, cross-built here with zig;
#                                                    run under wine by scripts/test-windows.sh
#   scripts/release.sh --target aarch64-apple-darwin    a .tar.gz, cross-built here with zig (or
#                                                    on a Mac); x86_64-apple-darwin likewise;
#                                                    checked by scripts/check-macho.py
#
# The model comes from CHAARFM_MODEL, else ../shared/models, else the user cache dir
# (models/fetch.sh); it must be the published file (sha256 of models/msd-musicnn-1.json).
set -euo pipefail
cd "$(dirname "$0")/.."
host=0
target=x86_64-unknown-linux-gnu
while [ $# -gt 0 ]; do
  case "$1" in
    --host) host=1 ;;
    --target) target=${2:?--target needs a target triple}; shift ;;
    *) echo "release: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
say() { printf 'release: %s\n' "$*" >&2; }
bash scripts/setup.sh

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
ort_version=$(cat .deps/onnxruntime/VERSION)
glibc_floor=2.28

# The ONNX Runtime files of another platform's wheel, into $2.
ort_wheel() {
  local platform=$1 dest=$2 ort_version=${3:-$ort_version}
  [ -f "$dest/VERSION" ] && [ "$(cat "$dest/VERSION")" = "$ort_version" ] && return
  say "fetching the onnxruntime $ort_version wheel for $platform from PyPI"
  local tmp; tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform "$platform" \
    --python-version 3.11 -d "$tmp" "onnxruntime==$ort_version"
  mkdir -p "$dest"
  python3 - "$tmp" "$dest" <<'PY'
import glob, os, sys, zipfile
src, dst = sys.argv[1:]
with zipfile.ZipFile(glob.glob(os.path.join(src, "*.whl"))[0]) as z:
    for n in z.namelist():
        base = os.path.basename(n)
        lib = "/capi/" in n and (base.endswith(".dll") or base.endswith(".dylib"))
        if lib or n in ("onnxruntime/LICENSE", "onnxruntime/ThirdPartyNotices.txt"):
            # libonnxruntime.1.32.0.dylib is looked up as libonnxruntime.dylib.
            if base.startswith("libonnxruntime.") and base.endswith(".dylib"):
                base = "libonnxruntime.dylib"
            with z.open(n) as f, open(os.path.join(dst, base), "wb") as out:
                out.write(f.read())
PY
  echo "$ort_version" > "$dest/VERSION"
  rm -rf "$tmp"
}

# uv for Windows' install.ps1 (it makes the yt-dlp environment without a system Python):
# the version pinned here, its wheel's sha256 written into install.ps1.
uv_version=0.13.9
# Fetches uv's win_amd64 wheel from PyPI into .deps/uv-win_amd64 (uv.exe unpacked beside
# it, for scripts/test-windows.sh) and prints its sha256; fails unless uv.exe is where
# install.ps1 takes it from.
uv_wheel() {
  local dest=.deps/uv-win_amd64
  if [ ! -f "$dest/VERSION" ] || [ "$(cat "$dest/VERSION")" != "$uv_version" ]; then
    say "fetching the uv $uv_version wheel for win_amd64 from PyPI"
    rm -rf "$dest"; mkdir -p "$dest"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform win_amd64 \
      -d "$dest" "uv==$uv_version"
    echo "$uv_version" > "$dest/VERSION"
  fi
  python3 - "$dest" "$uv_version" <<'PY'
import glob, hashlib, os, sys, zipfile
dest, version = sys.argv[1:]
wheel = glob.glob(os.path.join(dest, "uv-*-win_amd64.whl"))[0]
inside = f"uv-{version}.data/scripts/uv.exe"
with zipfile.ZipFile(wheel) as z:
    if inside not in z.namelist():
        sys.exit(f"release: {wheel} holds no {inside}, where install.ps1 takes uv.exe from")
    with open(os.path.join(dest, "uv.exe"), "wb") as f:
        f.write(z.read(inside))
print(hashlib.sha256(open(wheel, "rb").read()).hexdigest())
PY
}

exe=chaarfm-super
case "$target" in
  x86_64-unknown-linux-gnu)
    [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || { say "the $target bundle is built on Linux x86_64"; exit 2; }
    if [ "$host" = 1 ]; then
      cargo build --release --locked -p chaarfm-super >&2
      bin=target/release/chaarfm-super
    else
      source scripts/zig.sh
      cargo zigbuild --release --locked -p chaarfm-super --target "$target.$glibc_floor" >&2
      bin="target/$target/release/chaarfm-super"
    fi
    ort=.deps/onnxruntime; ort_files=(libonnxruntime.so libonnxruntime_providers_shared.so)
    ort_dest=lib; archive=tar.gz ;;
  x86_64-pc-windows-gnu)
    source scripts/zig.sh
    rustup target list --installed | grep -qx "$target" || rustup target add "$target" >&2
    cargo zigbuild --release --locked -p chaarfm-super --target "$target" >&2
    bin="target/$target/release/chaarfm-super.exe"; exe=chaarfm-super.exe
    ort=.deps/onnxruntime-win_amd64; ort_wheel win_amd64 "$ort"
    # Windows loads a DLL's dependencies from the executable's directory: keep them there.
    ort_files=(onnxruntime.dll onnxruntime_providers_shared.dll); ort_dest=.; archive=zip ;;
  aarch64-apple-darwin | x86_64-apple-darwin)
    # The oldest macOS the bundle runs on: the onnxruntime wheel's own floor. Without it
    # zig would mark the binary for the newest macOS it knows.
    [ "$target" = aarch64-apple-darwin ] && macos_floor=14.0 || macos_floor=13.0
    export MACOSX_DEPLOYMENT_TARGET=$macos_floor
    rustup target list --installed | grep -qx "$target" || rustup target add "$target" >&2
    if [ "$(uname -s)" = Darwin ]; then
      cargo build --release --locked -p chaarfm-super --target "$target" >&2
    else
      # zig links a Mach-O that needs only libSystem (no SDK framework: os::macos reads
      # what sysinfo would through IOKit) and signs it ad hoc, as Apple Silicon requires.
      source scripts/zig.sh
      cargo zigbuild --release --locked -p chaarfm-super --target "$target" >&2
    fi
    bin="target/$target/release/chaarfm-super"
    # ONNX Runtime's last Intel macOS wheel is 1.23.2 (later releases build arm64 only):
    # setup.sh's "oldest" runtime, which a test runs the corpus on. The program needs
    # API 22 (ONNX Runtime >= 1.22, ort's `api-22`); the model probe checks its values at
    # start as it does everywhere.
    plat=macosx_14_0_arm64 plat_ort=$ort_version
    [ "$target" = x86_64-apple-darwin ] && plat=macosx_13_0_x86_64 plat_ort=$(cat .deps/onnxruntime-oldest/VERSION)
    ort=".deps/onnxruntime-$plat"; ort_wheel "$plat" "$ort" "$plat_ort"
    ort_files=(libonnxruntime.dylib); ort_dest=lib; archive=tar.gz ;;
  *) say "no bundle recipe for $target"; exit 2 ;;
esac

model=""
for m in "${CHAARFM_MODEL:-}" ../shared/models/msd-musicnn-1.onnx \
  "${XDG_CACHE_HOME:-$HOME/.cache}/chaarfm-super/models/msd-musicnn-1.onnx"; do
  [ -n "$m" ] && [ -f "$m" ] && { model=$m; break; }
done
[ -n "$model" ] || { say "no model: run models/fetch.sh or set CHAARFM_MODEL"; exit 1; }
want=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sha256"])' models/msd-musicnn-1.json)
got=$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$model")
[ "$got" = "$want" ] || { say "$model has sha256 $got, not the published $want: fetch it again (models/README.md)"; exit 1; }

name="chaarfm-super-$version-$target"
stage="dist/$name"
rm -rf "$stage" "dist/$name.tar.gz" "dist/$name.zip"
mkdir -p "$stage/models" "$stage/$ort_dest"
case "$target" in
  # binutils' strip handles ELF and PE alike (the Windows .exe: 66 MB -> 14 MB).
  *-linux-gnu | *-windows-gnu) strip -o "$stage/$exe" "$bin" ;;
  # Apple's strip keeps the signature valid; off a Mac the signed file goes as it is.
  *-apple-darwin) if [ "$(uname -s)" = Darwin ]; then strip -S -o "$stage/$exe" "$bin"; else cp "$bin" "$stage/$exe"; fi ;;
esac
for f in "${ort_files[@]}"; do cp "$ort/$f" "$stage/$ort_dest/"; done
mkdir -p "$stage/licences/onnxruntime"
cp "$ort/LICENSE" "$ort/ThirdPartyNotices.txt" "$stage/licences/onnxruntime/"
cp "$model" "$stage/models/msd-musicnn-1.onnx"
cp models/msd-musicnn-1.json models/LICENCE.md "$stage/models/"
cp LICENSE-MIT LICENSE-APACHE "$stage/"
if [ "$archive" = zip ]; then
  sed "s/VERSION/$version/g; s/TARGET/$target/g" scripts/bundle/README-windows.md > "$stage/README.md"
  uv_sha=$(uv_wheel)
  sed "s/UV_VERSION/$uv_version/g; s/UV_SHA256/$uv_sha/g" scripts/bundle/install.ps1 > "$stage/install.ps1"
  ! grep -q 'UV_VERSION\|UV_SHA256' "$stage/install.ps1" || { say "install.ps1 kept a placeholder"; exit 1; }
  say "install.ps1: uv $uv_version, wheel sha256 $uv_sha"
  python3 - "$stage" "dist/$name.zip" <<'PY'
import os, sys, zipfile
stage, out = sys.argv[1:]
root = os.path.dirname(stage)
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for d, _, files in sorted(os.walk(stage)):
        for f in sorted(files):
            p = os.path.join(d, f)
            z.write(p, os.path.relpath(p, root))
PY
else
  readme=scripts/bundle/README.md
  case "$target" in *-apple-darwin) readme=scripts/bundle/README-macos.md ;; esac
  sed "s/VERSION/$version/g; s/TARGET/$target/g" "$readme" > "$stage/README.md"
  cp scripts/bundle/install.sh "$stage/install.sh"
  chmod 755 "$stage/$exe" "$stage/install.sh"
  tar -C dist -czf "dist/$name.tar.gz" "$name"
fi
out="dist/$name.$archive"
size=$(wc -c < "$out")
say "$out: $((size / 1024 / 1024)) MB ($size bytes)"
[ "$size" -le $((50 * 1024 * 1024)) ] || { say "over the 50 MB target"; exit 1; }

case "$target" in
  x86_64-unknown-linux-gnu)
    # What the bundle asks of a machine: the newest glibc symbol version each part needs.
    floor() { objdump -T "$1" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1; }
    bin_glibc=$(floor "$stage/$exe")
    say "needs glibc: chaarfm-super $bin_glibc, libonnxruntime.so $(floor "$stage/lib/libonnxruntime.so")"
    if [ "$host" = 0 ] && [ "$(printf '%s\n%s\n' "$bin_glibc" "$glibc_floor" | sort -V | tail -n1)" != "$glibc_floor" ]; then
      say "the binary needs glibc $bin_glibc, above the $glibc_floor floor"; exit 1
    fi
    bash scripts/check-bundle.sh "$out" ;;
  x86_64-pc-windows-gnu)
    # Nothing here runs a Windows binary: check what it is and what it imports.
    if command -v objdump >/dev/null; then
      objdump -f "$stage/$exe" | grep -q "pei-x86-64" || { say "$exe is not a Windows x86-64 executable"; exit 1; }
      say "$exe imports: $(objdump -p "$stage/$exe" | sed -n 's/.*DLL Name: //p' | sort -u | tr '\n' ' ')"
    fi
    python3 -c 'import sys,zipfile; [print("  " + n) for n in zipfile.ZipFile(sys.argv[1]).namelist()]' "$out" >&2 ;;
  *-apple-darwin)
    # Without a Mac: the CPU type, only system libraries, and on arm64 a code signature
    # whose page hashes hold, the checker shown to refuse a copy with one byte changed.
    arch=arm64; [ "$target" = x86_64-apple-darwin ] && arch=x86_64
    python3 scripts/check-macho.py "$stage/$exe" "$arch" "$macos_floor" >&2
    if [ "$arch" = arm64 ]; then
      tampered=$(mktemp)
      python3 - "$stage/$exe" "$tampered" <<'PY'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
data[0x4000 + 123] ^= 0xFF  # inside the code: its page's hash no longer matches
open(sys.argv[2], "wb").write(data)
PY
      if python3 scripts/check-macho.py "$tampered" "$arch" >/dev/null 2>&1; then
        rm -f "$tampered"; say "check-macho.py accepted a tampered executable"; exit 1
      fi
      rm -f "$tampered"
    fi
    tar -tzf "$out" | sed 's/^/  /' >&2 ;;
esac
