#!/usr/bin/env python3
"""Writes child/src/resample/sinc_medium.f32: libsamplerate's SINC_MEDIUM_QUALITY filter
table (mid_qual_coeffs.h, 22438 coefficients + its increment 491), as little-endian f32,
exactly the `float` values libsamplerate compiles in (its coeff_t is float).

libsamplerate is Copyright (c) 2002-2016 Erik de Castro Lopo, BSD-2-Clause; the notice is
kept in child/src/resample/LICENSE-libsamplerate.

Usage: python3 scripts/gen_sinc_table.py path/to/libsamplerate/src/mid_qual_coeffs.h
(the header ships in the libsamplerate-sys crate: ~/.cargo/registry/src/*/libsamplerate-sys-*/libsamplerate/src/).
"""
import re
import struct
import sys

src = open(sys.argv[1]).read()
body = src[src.index("{", src.index("slow_mid_qual_coeffs =")):]
inc = int(re.search(r"\{\s*(\d+)\s*,", body).group(1))
nums = [float(x) for x in re.findall(r"[-+]?\d\.\d+(?:e[-+]\d+)?", body[body.index(",") + 1:])]
assert inc == 491 and len(nums) == 22438, (inc, len(nums))
out = "child/src/resample/sinc_medium.f32"
with open(out, "wb") as f:
    f.write(struct.pack("<%df" % len(nums), *nums))
print("wrote", out, len(nums), "coefficients, increment", inc)
