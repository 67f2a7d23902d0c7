"""A tiny PNG encoder (stdlib only) so fakes can serve real images of any size.

The bot checks what it downloads (magic bytes, dimensions), so the fake must hand out
genuine PNGs; a solid-ish striped pattern keeps encoding fast even at 1664x928.
"""

from __future__ import annotations

import functools
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_STRIPE_ROWS = 32  # rows per colour band


def _chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC over type+payload."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _colours(seed: int) -> tuple[bytes, bytes]:
    """Two RGB colours derived from the seed, so different seeds give different bytes."""
    h = zlib.crc32(struct.pack(">q", seed))
    first = bytes(((h >> 16) & 0xFF, (h >> 8) & 0xFF, h & 0xFF))
    second = bytes(255 - c for c in first)
    return first, second


@functools.lru_cache(maxsize=32)
def make_png(width: int, height: int, seed: int = 0) -> bytes:
    """A valid 8-bit RGB PNG of ``width`` x ``height`` with horizontal bands coloured by ``seed``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"bad PNG size {width}x{height}")
    first, second = _colours(seed)
    row_a = b"\x00" + first * width  # filter byte 0 (None) then the pixels
    row_b = b"\x00" + second * width
    band_pair = row_a * _STRIPE_ROWS + row_b * _STRIPE_ROWS
    pairs, rest = divmod(height, 2 * _STRIPE_ROWS)
    tail = band_pair[: rest * len(row_a)]
    raw = band_pair * pairs + tail
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, RGB, no interlace
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 3)) + _chunk(b"IEND", b"")


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; ValueError when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height
