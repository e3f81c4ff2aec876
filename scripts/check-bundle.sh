#!/usr/bin/env bash
# Checks a release bundle as a user would meet it: unpacked in a temporary directory,
# outside this checkout, run with an empty environment (env -i: no PATH, no HOME, none of
# the variables cargo sets). It must embed the corpus with Essentia's vectors (cos >=
# 0.9999 against ../shared/corpus/refs.json); after its install.sh, its doctor must find
# the runtime, the model, yt-dlp and deno, all inside the bundle. Exit status 0 only if
# all of that holds.
set -euo pipefail
tarball=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
corpus=$(cd "$(dirname "$0")/../../shared/corpus" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -C "$tmp" -xzf "$tarball"
dir=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d | head -n1)
cd /
files=()
for f in "$corpus"/*; do
  case "$f" in *.json) ;; *) files+=("$f") ;; esac
done
# The bundle's installer: yt-dlp[default] and deno into tools/ (PyPI).
"$dir/install.sh" >&2
set +e
env -i "$dir/chaarfm-super" embed "${files[@]}" > "$tmp/out.jsonl" 2> "$tmp/err.log"
status=$?
env -i "$dir/chaarfm-super" doctor --json --state-dir "$tmp/state" > "$tmp/doctor.json"
set -e
python3 - "$tmp/out.jsonl" "$corpus/refs.json" "$tmp/doctor.json" "$status" "$tmp/err.log" "${#files[@]}" "$dir" <<'PY'
import json, math, os, sys
out, refs, doctor, status, err, nfiles, bundle = sys.argv[1:]
refs = json.load(open(refs))
lines = [json.loads(l) for l in open(out) if l.strip()]
bad = []
for rec in lines:
    name = os.path.basename(rec["path"])
    ref = refs.get(name, {})
    if ref.get("vector") is None:
        ok = "error" in rec
        print(f"check-bundle: {name}: {'fails as it should' if ok else 'should fail'}: {rec.get('error')}")
        ok or bad.append(name)
        continue
    if "vector" not in rec:
        bad.append(name)
        print(f"check-bundle: {name}: {rec.get('error')}")
        continue
    a, b = rec["vector"], ref["vector"]
    cos = sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    print(f"check-bundle: {name}: cos {cos:.7f}")
    cos >= 0.9999 or bad.append(name)
if len(lines) != int(nfiles):
    bad.append(f"{len(lines)} results for {nfiles} files")
checks = {c["check"]: c for c in json.load(open(doctor))["checks"]}
for name in ("runtime", "model", "yt-dlp", "js-runtime"):
    c = checks[name]
    print(f"check-bundle: doctor {name}: {c['status']}: {c['detail']}")
    c["status"] == "ok" or bad.append("doctor " + name)
    bundle in c["detail"] or bad.append(f"doctor {name} not from the bundle")
if status not in ("0", "1"):
    bad.append(f"embed exit {status}")
if bad:
    sys.stderr.write(open(err).read())
    sys.exit(f"check-bundle: FAILED: {', '.join(bad)}")
print(f"check-bundle: ok: {len(lines)} files from the bundle, run with env -i outside the checkout")
PY
