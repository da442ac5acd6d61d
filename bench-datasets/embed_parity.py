#!/usr/bin/env python3
"""Cosine between two .fbin files, row by row: shardann's vectors against
reference vectors (e.g. sentence-transformers' base.fbin of manpages-dev).

Pure Python (array module), no numpy needed.

    bench-datasets/embed_parity.py OURS.fbin REFERENCE.fbin [--min 0.999]

Prints rows, min, mean, the 5 lowest rows; exits 1 if min < --min.
"""
import argparse
import array
import math
import struct
import sys


def read_fbin(path):
    with open(path, "rb") as f:
        n, d = struct.unpack("<II", f.read(8))
        a = array.array("f")
        a.frombytes(f.read())
    if sys.byteorder != "little":
        a.byteswap()
    if len(a) != n * d:
        sys.exit(f"{path}: header says {n} x {d}, file holds {len(a)} floats")
    return n, d, a


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("reference")
    ap.add_argument("--min", type=float, default=0.999)
    args = ap.parse_args()
    n, d, a = read_fbin(args.ours)
    m, e, b = read_fbin(args.reference)
    if (n, d) != (m, e):
        sys.exit(f"shapes differ: {n} x {d} against {m} x {e}")
    cos = []
    for r in range(n):
        x = a[r * d:(r + 1) * d]
        y = b[r * d:(r + 1) * d]
        dot = math.fsum(p * q for p, q in zip(x, y))
        nx = math.sqrt(math.fsum(p * p for p in x))
        ny = math.sqrt(math.fsum(q * q for q in y))
        cos.append(dot / (nx * ny))
    low = sorted(range(n), key=lambda r: cos[r])[:5]
    print(f"rows {n}  min {min(cos):.9f}  mean {math.fsum(cos) / n:.9f}")
    print("lowest: " + ", ".join(f"row {r} {cos[r]:.9f}" for r in low))
    sys.exit(0 if min(cos) >= args.min else 1)


if __name__ == "__main__":
    main()
