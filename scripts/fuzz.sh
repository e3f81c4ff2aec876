#!/usr/bin/env bash
# Fuzzes chaarfm-super's parsers of bytes it does not control (tests/fuzz): server
# messages, IPC frames, outbox files, ingest's resume file, and the child's decoder.
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]      (default: all, 900 s = 15 min each)
#
# Needs the nightly toolchain; installs cargo-fuzz if missing. Seeds come from
# ../shared/corpus (the first 64 KiB of each file, for the decoder) and a few valid
# messages; corpora and crash artifacts stay in tests/fuzz/{corpus,artifacts} (not
# committed). Every input is bounded: 10 s (-timeout) and 2 GiB RSS (-rss_limit_mb).
# A crash found here becomes a regression test in the normal suite
# (fuzz_regression_* in shared/tests/roundtrip.rs, or beside the code it broke).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
fuzz="$root/tests/fuzz"
corpus_src="$root/../shared/corpus"
target="${1:-all}"
seconds="${2:-900}"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || {
    echo "fuzz.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 1
}

seed() { # seed DIR NAME BYTES...
    mkdir -p "$1"
    printf "$3" > "$1/$2"
}

make_seeds() {
    local c="$fuzz/corpus"
    mkdir -p "$c/decode"
    if [ -d "$corpus_src" ]; then
        local i=0
        for f in "$corpus_src"/*; do
            case "$f" in *.json) continue ;; esac
            # First byte picks the extension in the target: 0 mp3, 1 m4a, 2 ogg, 3 flac,
            # 4 wav, 5 webm, 6 opus, 7 none.
            local pick
            case "${f##*.}" in
                mp3) pick=0 ;; m4a) pick=1 ;; ogg) pick=2 ;; flac) pick=3 ;;
                wav) pick=4 ;; webm) pick=5 ;; opus) pick=6 ;; *) pick=7 ;;
            esac
            { printf "\\x0$pick"; head -c 65536 "$f"; } > "$c/decode/seed-$i"
            i=$((i + 1))
        done
    fi
    seed "$c/server_message" job '{"type":"job","job_id":"17","payload":{"artist":"A","title":"T","youtube_url":"https://youtu.be/x"}}'
    seed "$c/server_message" genre '{"type":"job","job_id":18,"payload":{"job_type":"fetch_genre","genre":"jazz","limit":5}}'
    seed "$c/server_message" welcome '{"type":"welcome","protocol":2,"slots":3}'
    seed "$c/server_message" ack '{"type":"ack","job_id":"17"}'
    seed "$c/server_message" result '{"type":"result","job_id":"1","status":"failed","error":"x"}'
    # IPC: ToChild::Job{id 3, "/a.mp3", tags}, ToChild::Shutdown, FromChild::Heartbeat.
    seed "$c/ipc_frame" job '\x0a\x00\x00\x00\x00\x03\x06/a.mp3\x01'
    seed "$c/ipc_frame" two '\x01\x00\x00\x00\x01\x01\x00\x00\x00\x05'
    seed "$c/outbox_entry" entry '{"job_id":"7","lane":1,"msg":{"type":"result","job_id":"7","status":"success","data":{"artist":"A","title":"T","youtube_id":"x","vector":[0.5,1.0],"source_url":null}}}'
    seed "$c/resume_file" lines '{"path":"a.mp3","vector":[0.5],"patches":1,"duration_s":3.5,"file":{"size":10,"mtime_ns":5}}\n{"path":{"bytes":"Y2Fm6Q=="},"error":"too short","file":{"size":1,"mtime_ns":2}}\n{"path":"cut'
}

run() { # run TARGET
    local t="$1" max_len=4096
    [ "$t" = decode ] && max_len=65537
    mkdir -p "$fuzz/artifacts/$t"
    echo "== fuzz $t for $seconds s"
    (cd "$fuzz" && cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        -max_len="$max_len" -artifact_prefix="artifacts/$t/" -print_final_stats=1)
}

make_seeds
if [ "$target" = all ]; then
    for t in server_message ipc_frame outbox_entry resume_file decode; do run "$t"; done
else
    run "$target"
fi
