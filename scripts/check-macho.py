#!/usr/bin/env python3
"""Checks a macOS executable without a Mac (release.sh runs it on the macOS bundle):
   - a 64-bit Mach-O executable for the expected CPU (arm64 or x86_64);
   - every library it loads is the system's (/usr/lib, /System/Library): nothing a Mac
     lacks, and no framework from Apple's SDK beyond those;
   - arm64: it carries a code signature whose CodeDirectory hashes match its pages, which
     Apple Silicon requires of any native code it runs (zig's linker signs ad hoc). An
     x86_64 executable needs none (Intel Macs, and Rosetta on Apple Silicon, run unsigned
     x86_64 code) and zig does not sign it; a signature it does carry is checked.
   - it runs on macOS FLOOR (LC_BUILD_VERSION's minimum) when FLOOR is given.
Usage: check-macho.py FILE arm64|x86_64 [FLOOR]"""
import hashlib
import struct
import sys

CPU = {"arm64": 0x0100000C, "x86_64": 0x01000007}
LC_LOAD_DYLIB, LC_LOAD_WEAK_DYLIB, LC_REEXPORT_DYLIB, LC_LAZY_LOAD_DYLIB = 0xC, 0x80000018, 0x8000001F, 0x20
LC_CODE_SIGNATURE = 0x1D
LC_BUILD_VERSION = 0x32
SYSTEM = ("/usr/lib/", "/System/Library/")


def fail(msg):
    sys.exit(f"check-macho: {msg}")


def main(path, arch, floor=None):
    data = open(path, "rb").read()
    magic, cputype, _sub, filetype, ncmds, _size, _flags, _res = struct.unpack_from("<IiiIIIII", data, 0)
    if magic != 0xFEEDFACF:
        fail(f"{path} is not a 64-bit little-endian Mach-O (magic {magic:#x})")
    if cputype != CPU[arch]:
        fail(f"{path} is for CPU type {cputype:#x}, not {arch}")
    if filetype != 2:
        fail(f"{path} is not an executable (file type {filetype})")
    libs, signature, build, off = [], None, None, 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, off)
        if cmd in (LC_LOAD_DYLIB, LC_LOAD_WEAK_DYLIB, LC_REEXPORT_DYLIB, LC_LAZY_LOAD_DYLIB):
            name_off = struct.unpack_from("<I", data, off + 8)[0]
            libs.append(data[off + name_off:off + size].split(b"\0")[0].decode())
        elif cmd == LC_BUILD_VERSION:
            build = struct.unpack_from("<III", data, off + 8)
        elif cmd == LC_CODE_SIGNATURE:
            signature = struct.unpack_from("<II", data, off + 8)
        off += size
    version = lambda v: f"{v >> 16}.{(v >> 8) & 0xFF}"
    if build is None or build[0] != 1:
        fail(f"{path} does not say it is built for macOS (LC_BUILD_VERSION {build})")
    if floor is not None:
        want = [int(x) for x in floor.split(".")] + [0]
        if (build[1] >> 16, (build[1] >> 8) & 0xFF) > (want[0], want[1]):
            fail(f"{path} needs macOS {version(build[1])}, above the {floor} floor")
    foreign = [lib for lib in libs if not lib.startswith(SYSTEM)]
    if foreign:
        fail(f"{path} loads libraries a Mac does not have: {foreign}")
    if signature is None and arch == "x86_64":
        print(f"check-macho: {path}: x86_64 {version(build[1])}+, system libraries only, "
              "unsigned (Intel Macs and Rosetta run unsigned x86_64 code)")
        return
    if signature is None:
        fail(f"{path} has no code signature: Apple Silicon refuses to run it")
    sig_off, sig_size = signature
    blob = data[sig_off:sig_off + sig_size]
    sb_magic, _len, count = struct.unpack_from(">III", blob, 0)
    if sb_magic != 0xFADE0CC0:
        fail(f"{path}: the code signature is not an embedded signature (magic {sb_magic:#x})")
    checked = 0
    for i in range(count):
        _type, cd_off = struct.unpack_from(">II", blob, 12 + 8 * i)
        if struct.unpack_from(">I", blob, cd_off)[0] != 0xFADE0C02:
            continue
        (_m, _l, _ver, _fl, hash_off, _ident, _nspecial, ncode, code_limit,
         hash_size, hash_type, _plat, page_log2) = struct.unpack_from(">IIIIIIIIIBBBB", blob, cd_off)
        if hash_type != 2 or hash_size != 32:
            continue  # only SHA-256 directories are checked
        page = 1 << page_log2
        for slot in range(ncode):
            start = slot * page
            want = blob[cd_off + hash_off + slot * 32:cd_off + hash_off + (slot + 1) * 32]
            if hashlib.sha256(data[start:min(start + page, code_limit)]).digest() != want:
                fail(f"{path}: page {slot} does not match its code signature")
        checked = ncode
    if not checked:
        fail(f"{path}: no SHA-256 code directory in its signature")
    print(f"check-macho: {path}: {arch} macOS executable (minimum macOS {version(build[1])}), loads {', '.join(libs)}; signed, {checked} pages match")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[2] not in CPU:
        sys.exit(__doc__)
    main(*sys.argv[1:])
