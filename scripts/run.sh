#!/usr/bin/env bash
# The main job on this repository's default input (README): set-up, build, then embed
# every audio file of ../shared/corpus, one JSON line per file on stdout.
# Extra arguments replace the corpus: scripts/run.sh embed --tags my.mp3
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -p chaarfm-super >&2
if [ $# -eq 0 ]; then
  shopt -s nullglob
  set -- embed ../shared/corpus/*.{mp3,m4a,ogg,flac,wav,webm}
fi
exec ./target/release/chaarfm-super "$@"
