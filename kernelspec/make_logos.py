#!/usr/bin/env python3
"""Draw the parallax kernelspec logos (logo-32x32.png, logo-64x64.png) next to this script.

The mark is two slanted, rounded bars offset in height: a deep-blue near bar and a light-blue
far bar, the parallax of two posts seen from a moving eye. Standard library only (the PNG is
written by hand), and deterministic, so re-running it reproduces the committed files byte for
byte:

    python3 kernelspec/make_logos.py
"""

import struct
import zlib
from pathlib import Path

NEAR = (37, 99, 235)  # deep blue, drawn on top
FAR = (96, 165, 250)  # light blue, behind
SLANT = 0.18  # horizontal shift per unit of height (bars lean right)
RADIUS = 0.07  # corner radius, in units of the image size
SAMPLES = 8  # supersampling per axis, for anti-aliased edges

# (left, top, right, bottom) in units of the image size, before slanting; far bar first.
BARS = [
    ((0.54, 0.10, 0.82, 0.72), FAR),
    ((0.18, 0.28, 0.46, 0.90), NEAR),
]


def inside(box, x, y):
    """Whether (x, y) is inside the slanted rounded rectangle `box`."""
    left, top, right, bottom = box
    # Undo the slant about the box's vertical centre, then test an upright rounded rectangle.
    x += SLANT * (y - (top + bottom) / 2)
    if not (left <= x <= right and top <= y <= bottom):
        return False
    cx = min(max(x, left + RADIUS), right - RADIUS)
    cy = min(max(y, top + RADIUS), bottom - RADIUS)
    return (x - cx) ** 2 + (y - cy) ** 2 <= RADIUS**2


def render(size):
    """RGBA rows for a size x size logo on a transparent background."""
    rows = []
    for py in range(size):
        row = bytearray()
        for px in range(size):
            r = g = b = a = 0.0  # premultiplied accumulator
            for box, color in BARS:
                hits = 0
                for sy in range(SAMPLES):
                    for sx in range(SAMPLES):
                        x = (px + (sx + 0.5) / SAMPLES) / size
                        y = (py + (sy + 0.5) / SAMPLES) / size
                        hits += inside(box, x, y)
                cover = hits / SAMPLES**2
                # "over" compositing of this bar onto what is already there
                r = color[0] * cover + r * (1 - cover)
                g = color[1] * cover + g * (1 - cover)
                b = color[2] * cover + b * (1 - cover)
                a = cover + a * (1 - cover)
            if a > 0:
                row += bytes((round(r / a), round(g / a), round(b / a), round(a * 255)))
            else:
                row += bytes(4)
        rows.append(bytes(row))
    return rows


def png(size, rows):
    """Encode RGBA rows as a PNG file."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    raw = b"".join(b"\x00" + row for row in rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def main():
    here = Path(__file__).resolve().parent
    for size in (32, 64):
        path = here / f"logo-{size}x{size}.png"
        path.write_bytes(png(size, render(size)))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
