#!/usr/bin/env bash
# Gets the MusiCNN model chaarfm-super needs and installs it where the binary looks
# (the user cache dir: ~/.cache/chaarfm-super/models on Linux).
#
#   models/fetch.sh                       download Essentia's msd-musicnn-1.pb and convert it
#   models/fetch.sh --pb FILE.pb          convert a .pb you already have
#   models/fetch.sh --onnx FILE.onnx      verify and install an already converted model
#   models/fetch.sh ... --dest DIR        install into DIR instead
#
# Conversion uses tf2onnx 1.17.0 on TensorFlow 2.21 (CPU) in a throw-away venv, with the
# command in MUSICNN.md. tf2onnx output is not byte-reproducible (two runs, two hashes), so
# a model is accepted when its sha256 is the manifest's or when it reproduces the
# manifest's probe embedding (max abs error 1e-3), the same rule the binary applies. Not run in CI (it downloads ~600 MB of TensorFlow). Licence: the model is
# Essentia's, CC BY-NC-SA 4.0 (see models/README.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
manifest="$here/msd-musicnn-1.json"
field() { python3 -c "import json,sys; d=json.load(open('$manifest')); print(eval('d' + sys.argv[1]))" "$1"; }
onnx_sha=$(field "['sha256']"); pb_sha=$(field "['source']['sha256']"); url=$(field "['source']['url']")
file=$(field "['file']")
case "$(uname -s)" in
  Darwin) dest="$HOME/Library/Caches/chaarfm-super/models" ;;
  *) dest="${XDG_CACHE_HOME:-$HOME/.cache}/chaarfm-super/models" ;;
esac
pb=""; onnx=""
while [ $# -gt 0 ]; do
  case "$1" in
    --pb) pb="$2"; shift 2 ;;
    --onnx) onnx="$2"; shift 2 ;;
    --dest) dest="$2"; shift 2 ;;
    *) echo "usage: $0 [--pb FILE | --onnx FILE] [--dest DIR]" >&2; exit 2 ;;
  esac
done
sha() { python3 -c "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())" "$1"; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

if [ -z "$onnx" ]; then
  if [ -z "$pb" ]; then
    echo "fetch: downloading $url" >&2
    python3 -c "import urllib.request,sys; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])" "$url" "$work/model.pb"
    pb="$work/model.pb"
  fi
  [ "$(sha "$pb")" = "$pb_sha" ] || { echo "fetch: $pb has sha256 $(sha "$pb"), expected $pb_sha" >&2; exit 1; }
  echo "fetch: converting with tf2onnx 1.17.0 / TensorFlow 2.21 (takes a few minutes)" >&2
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet "tensorflow-cpu==2.21.0" "tf2onnx==1.17.0" onnxruntime
  "$work/venv/bin/python" -m tf2onnx.convert --graphdef "$pb" --inputs model/Placeholder:0 \
    --outputs model/dense/BiasAdd:0,model/Sigmoid:0 --opset 17 --output "$work/$file" >&2
  onnx="$work/$file"
fi
got=$(sha "$onnx")
if [ "$got" != "$onnx_sha" ]; then
  [ -x "$work/venv/bin/python" ] || { python3 -m venv "$work/venv"; "$work/venv/bin/pip" install --quiet onnxruntime; }
  "$work/venv/bin/python" - "$onnx" "$manifest" <<'PY' || { echo "fetch: $onnx has sha256 $got, expected $onnx_sha, and does not compute the published model's values" >&2; exit 1; }
import json, sys
import numpy as np, onnxruntime as ort
m = json.load(open(sys.argv[2]))
x = (np.arange(187 * 96) * 7919 % 1000 / 250.0).astype(np.float32).reshape(1, 187, 96)
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
emb = s.run([m["embedding_output"]], {m["input"]: x})[0][0]
err = float(np.abs(emb - np.array(m["probe"]["embedding"], dtype=np.float32)).max())
print(f"fetch: bytes differ from the published conversion; probe max abs error {err:.2e}", file=sys.stderr)
sys.exit(0 if err <= 1e-3 else 1)
PY
fi
mkdir -p "$dest"
cp "$onnx" "$dest/$file"
echo "fetch: installed $dest/$file (verified)" >&2
