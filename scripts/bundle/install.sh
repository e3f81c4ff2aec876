#!/bin/sh
# Puts yt-dlp[default] and deno (the JavaScript runtime yt-dlp needs for YouTube since
# late 2025) in a private venv beside the binary, where it looks for them (tools/).
# Run again to update them: YouTube breaks old yt-dlp versions.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
command -v python3 >/dev/null 2>&1 || {
  echo "install: python3 is needed for yt-dlp (e.g. sudo apt-get install python3 python3-venv)" >&2
  exit 1
}
if [ ! -x "$here/tools/bin/python3" ]; then
  python3 -m venv "$here/tools" || {
    echo "install: cannot create a venv (Debian/Ubuntu: sudo apt-get install python3-venv)" >&2
    exit 1
  }
fi
"$here/tools/bin/python3" -m pip install --quiet --upgrade "yt-dlp[default]" deno
echo "install: yt-dlp $("$here/tools/bin/yt-dlp" --version) and $("$here/tools/bin/deno" --version | head -n1) in $here/tools"
echo "install: now run $here/chaarfm-super doctor"
