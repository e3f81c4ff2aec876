# Sourced: runs Windows builds here under wine, for the Windows suite (scripts/test-windows.sh).
#   - wine64 from Debian (apt-get, as scripts/setup.sh installs its packages);
#   - a private prefix at .deps/wine (WINEPREFIX), made once (~5-7 s);
#   - bcryptprimitives.dll (scripts/wine/bcryptprimitives.c, built with zig) in its
#     system32: wine 8 lacks it and Rust's std needs its ProcessPrng.
# Exports WINEPREFIX and WINEDEBUG, and defines `winrun EXE ARGS...`.
wine_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$wine_root/scripts/zig.sh"
if ! command -v wine >/dev/null 2>&1 || [ ! -x /usr/lib/wine/wine64 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    printf 'wine: installing wine64 with apt-get\n' >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wine wine64 >/dev/null
  else
    printf 'wine: missing: install it (e.g. sudo apt-get install wine wine64) and run again\n' >&2
    return 1
  fi
fi
export WINEPREFIX="$wine_root/.deps/wine"
export WINEDEBUG=-all
# No "install Mono/Gecko?" dialogs: nothing here needs them.
export WINEDLLOVERRIDES="mscoree,mshtml="
wine_shim="$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"
if [ ! -f "$WINEPREFIX/system.reg" ]; then
  printf 'wine: making the prefix %s\n' "$WINEPREFIX" >&2
  mkdir -p "$WINEPREFIX"
  wineboot --init >/dev/null 2>&1
  # Windows 10, the oldest the bundle supports (wine's prefixes say Windows 7).
  wine reg add 'HKCU\Software\Wine' /v Version /d win10 /f >/dev/null 2>&1
  wineserver --wait
fi
if [ ! -f "$wine_shim" ] || [ "$wine_root/scripts/wine/bcryptprimitives.c" -nt "$wine_shim" ]; then
  printf 'wine: building bcryptprimitives.dll (ProcessPrng) into the prefix\n' >&2
  python3 -m ziglang cc -target x86_64-windows-gnu -shared -O2 -s \
    -o "$wine_shim" "$wine_root/scripts/wine/bcryptprimitives.c" -ladvapi32
fi
winrun() { wine "$@"; }
