#!/usr/bin/env python3
"""Convert scikit-learn's bundled copy of the UCI optdigits 8x8 digits into data/digits.bin.

The demo (`examples/digits.rs`) reads the result with plain Rust; Python is only needed to
re-create the file. The output is deterministic: the same input gives the same bytes.

    python3 -m venv .venv && .venv/bin/pip install scikit-learn
    .venv/bin/python scripts/convert_digits.py            # writes data/digits.bin

Format (all integers little-endian), 24-byte header then the payload:
    offset  size  field
    0       8     magic  b"MXDIGIT1"
    8       4     count  u32, number of images (1797)
    12      1     height u8 (8)
    13      1     width  u8 (8)
    14      1     max pixel value u8 (16)
    15      1     number of classes u8 (10)
    16      8     FNV-1a 64 of the payload
    24      count*height*width   pixels, u8 in 0..=max, row-major, image after image
    ...     count                labels, u8 in 0..classes
The rows keep scikit-learn's order (`load_digits()`), so index i is sample i there.
"""

import argparse
import gzip
import hashlib
import pathlib
import struct

MAGIC = b"MXDIGIT1"


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def find_csv() -> pathlib.Path:
    # Read the file that ships inside the scikit-learn wheel: no network, no fetch_* call.
    import sklearn.datasets

    path = pathlib.Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    if not path.exists():
        raise SystemExit(f"{path} not found: is scikit-learn installed?")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", type=pathlib.Path, help="digits.csv.gz (default: scikit-learn's copy)")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent.parent / "data" / "digits.bin")
    args = ap.parse_args()
    src = args.csv or find_csv()

    pixels = bytearray()
    labels = bytearray()
    with gzip.open(src, "rt") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            values = [int(float(v)) for v in line.split(",")]
            if len(values) != 65:
                raise SystemExit(f"{src}:{lineno}: expected 65 values, got {len(values)}")
            px, label = values[:64], values[64]
            if not all(0 <= v <= 16 for v in px) or not 0 <= label <= 9:
                raise SystemExit(f"{src}:{lineno}: value out of range")
            pixels.extend(px)
            labels.append(label)

    count = len(labels)
    payload = bytes(pixels) + bytes(labels)
    header = MAGIC + struct.pack("<IBBBBQ", count, 8, 8, 16, 10, fnv1a64(payload))
    assert len(header) == 24
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(header + payload)
    counts = [labels.count(c) for c in range(10)]
    print(f"source  {src} (sha256 {hashlib.sha256(src.read_bytes()).hexdigest()})")
    print(f"wrote   {args.out}: {count} images 8x8, {len(header) + len(payload)} bytes")
    print(f"classes {counts}")
    print(f"sha256  {hashlib.sha256(header + payload).hexdigest()}")


if __name__ == "__main__":
    main()
