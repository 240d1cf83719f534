#!/usr/bin/env python3
"""Independent check of a PNG written by grpo's plot writer (run by hand, not by ctest).

Parses the chunks, checks each CRC with zlib.crc32, inflates IDAT with zlib (which also checks the
Adler-32), undoes the scanline filters and prints the size and the most common colours.

    python tests/core/plot_check.py /tmp/plot_example.png
"""
import collections
import struct
import sys
import zlib


def check(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "bad signature"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"CRC mismatch in {kind}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND", "expected IHDR ... IEND"
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0), "expected 8-bit RGB"
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * 3
    assert len(raw) == (stride + 1) * height, "wrong amount of pixel data"
    pixels, previous = bytearray(), bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - 3] if i >= 3 else 0
            up, up_left = previous[i], previous[i - 3] if i >= 3 else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else up_left)) & 255
            else:
                assert kind == 0, f"unknown filter {kind}"
        pixels += line
        previous = line
    counts = collections.Counter(bytes(pixels[i:i + 3]) for i in range(0, len(pixels), 3))
    print(f"{path}: OK, {width} x {height}, {len(chunks)} chunks, {len(data)} bytes")
    for rgb, n in counts.most_common(8):
        print(f"  rgb{tuple(rgb)}: {n} pixels")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        check(p)
