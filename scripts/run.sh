#!/usr/bin/env bash
# The main job on this repository's default input (README): set-up, build, then work a
# ChaarFM queue end to end on this machine: the mock ChaarFM server (tests/) queues one
# download job per audio file of ../shared/corpus; chaarfm-super, in connect mode,
# downloads, embeds and returns each; when every job has a result it drains (SIGTERM)
# and this prints the summary: stored, failed with reasons (the too-short clip). Exit
# status: the worker's (0 after a clean drain).
# Extra arguments run the binary instead: scripts/run.sh embed --tags my.mp3
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# What cargo gives the binary in this checkout (.cargo/config.toml), for running it directly.
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.deps/onnxruntime/libonnxruntime.so}"
export CHAARFM_YTDLP="${CHAARFM_YTDLP:-$PWD/.deps/venv/bin/yt-dlp}"
[ -f ../shared/models/msd-musicnn-1.onnx ] && export CHAARFM_MODEL="${CHAARFM_MODEL:-$(cd ../shared/models && pwd)/msd-musicnn-1.onnx}"
if [ $# -gt 0 ]; then
  cargo build --release --locked -p chaarfm-super >&2
  exec ./target/release/chaarfm-super "$@"
fi
cargo build --release --locked -p chaarfm-super -p chaarfm-tests --bins >&2
corpus=${CHAARFM_CORPUS:-../shared/corpus}
work=$(mktemp -d)
mock_pid=""; sup_pid=""
cleanup() {
  [ -n "$sup_pid" ] && kill -TERM "$sup_pid" 2>/dev/null || true
  [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
./target/release/chaarfm-mock-server --port 0 --until-done "$corpus" > "$work/mock.log" &
mock_pid=$!
# The mock's first line names its URL (it took any free port).
url=""
for _ in $(seq 100); do
  url=$(sed -n 's/^mock ChaarFM on \([^ ]*\) .*/\1/p' "$work/mock.log" | head -n1)
  [ -n "$url" ] && break
  kill -0 "$mock_pid" 2>/dev/null || { cat "$work/mock.log" >&2; echo "run: the mock server did not start" >&2; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { echo "run: the mock server did not say its URL" >&2; exit 1; }
echo "run: working the queue of $url (jobs: the audio files of $corpus)" >&2
./target/release/chaarfm-super --url "$url" --code TEST42 --allow-private-urls \
  --state-dir "$work/state" &
sup_pid=$!
until grep -q '^queue done' "$work/mock.log"; do
  if ! kill -0 "$sup_pid" 2>/dev/null; then
    wait "$sup_pid" && status=0 || status=$?
    sup_pid=""
    cat "$work/mock.log"
    echo "run: the worker stopped (exit $status) before the queue was done" >&2
    exit "${status/#0/1}"
  fi
  sleep 1
done
# Every job has a result: drain (finish, deliver), as a service manager would stop it.
kill -TERM "$sup_pid"
wait "$sup_pid" && status=0 || status=$?
sup_pid=""
grep '^result ' "$work/mock.log" || true
grep '^queue done' "$work/mock.log"
exit "$status"
