#!/usr/bin/env bash
# Makes the release bundle dist/chaarfm-super-<version>-x86_64-unknown-linux-gnu.tar.gz
# and checks it (scripts/check-bundle.sh): the stripped binary, ONNX Runtime in lib/,
# the model with its manifest and licence note, the licences, a README and install.sh.
#
#   scripts/release.sh          built with cargo-zigbuild against glibc 2.28 (Debian 10,
#                               Ubuntu 20.04, RHEL 8), the floor of the onnxruntime wheel
#                               (manylinux_2_28); cargo-zigbuild and zig come from PyPI
#   scripts/release.sh --host   the binary built for this machine's glibc (quicker)
#
# The model comes from CHAARFM_MODEL, else ../shared/models, else the user cache dir
# (models/fetch.sh); it must be the published file (sha256 of models/msd-musicnn-1.json).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
host=0
for a in "$@"; do
  case "$a" in
    --host) host=1 ;;
    *) echo "release: unknown option $a (see the header of $0)" >&2; exit 2 ;;
  esac
done
say() { printf 'release: %s\n' "$*" >&2; }
bash scripts/setup.sh

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
triple=x86_64-unknown-linux-gnu
glibc_floor=2.28
[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || { say "builds the $triple bundle on Linux x86_64 only"; exit 2; }

if [ "$host" = 1 ]; then
  cargo build --release --locked -p chaarfm-super >&2
  bin=target/release/chaarfm-super
else
  zig="$root/.deps/zig"
  if [ ! -x "$zig/bin/cargo-zigbuild" ]; then
    say "installing cargo-zigbuild and zig (PyPI) into $zig"
    python3 -m venv "$zig"
    "$zig/bin/pip" install --quiet "cargo-zigbuild==0.24.1" "ziglang==0.17.1"
  fi
  PATH="$zig/bin:$PATH" cargo zigbuild --release --locked -p chaarfm-super \
    --target "$triple.$glibc_floor" >&2
  bin="target/$triple/release/chaarfm-super"
fi

model=""
for m in "${CHAARFM_MODEL:-}" ../shared/models/msd-musicnn-1.onnx \
  "${XDG_CACHE_HOME:-$HOME/.cache}/chaarfm-super/models/msd-musicnn-1.onnx"; do
  [ -n "$m" ] && [ -f "$m" ] && { model=$m; break; }
done
[ -n "$model" ] || { say "no model: run models/fetch.sh or set CHAARFM_MODEL"; exit 1; }
want=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sha256"])' models/msd-musicnn-1.json)
got=$(sha256sum "$model" | cut -d' ' -f1)
[ "$got" = "$want" ] || { say "$model has sha256 $got, not the published $want: fetch it again (models/README.md)"; exit 1; }

name="chaarfm-super-$version-$triple"
stage="dist/$name"
rm -rf "$stage" "dist/$name.tar.gz"
mkdir -p "$stage/lib" "$stage/models"
strip -o "$stage/chaarfm-super" "$bin"
cp .deps/onnxruntime/libonnxruntime.so .deps/onnxruntime/libonnxruntime_providers_shared.so \
  .deps/onnxruntime/LICENSE .deps/onnxruntime/ThirdPartyNotices.txt "$stage/lib/"
cp "$model" "$stage/models/msd-musicnn-1.onnx"
cp models/msd-musicnn-1.json models/LICENCE.md "$stage/models/"
cp LICENSE-MIT LICENSE-APACHE "$stage/"
sed "s/VERSION/$version/g; s/TARGET/$triple/g" scripts/bundle/README.md > "$stage/README.md"
cp scripts/bundle/install.sh "$stage/install.sh"
chmod 755 "$stage/chaarfm-super" "$stage/install.sh"
tar -C dist -czf "dist/$name.tar.gz" "$name"

# What the bundle asks of a machine: the newest glibc symbol version each part needs.
floor() { objdump -T "$1" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1; }
bin_glibc=$(floor "$stage/chaarfm-super")
ort_glibc=$(floor "$stage/lib/libonnxruntime.so")
size=$(stat -c %s "dist/$name.tar.gz")
say "dist/$name.tar.gz: $((size / 1024 / 1024)) MB ($size bytes)"
say "needs glibc: chaarfm-super $bin_glibc, libonnxruntime.so $ort_glibc"
[ "$size" -le $((50 * 1024 * 1024)) ] || { say "over the 50 MB target"; exit 1; }
if [ "$host" = 0 ] && [ "$(printf '%s\n%s\n' "$bin_glibc" "$glibc_floor" | sort -V | tail -n1)" != "$glibc_floor" ]; then
  say "the binary needs glibc $bin_glibc, above the $glibc_floor floor"; exit 1
fi
bash scripts/check-bundle.sh "dist/$name.tar.gz"
