"""A tiny PNG encoder (stdlib only) so fakes can serve real images of any size.

The bot checks what it downloads (magic bytes, dimensions), so the fake must hand out
genuine PNGs; a solid-ish striped pattern keeps encoding fast even at 1664x928.
"""

from __future__ import annotations

import functools
import hashlib
import random
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


# A private ancillary chunk ("fkPd": ancillary, private, safe to copy) that decoders skip: it pads
# an image to the size a test asks for, as real 2-7 MB outputs of the model are.
PADDING_CHUNK = b"fkPd"
_CHUNK_OVERHEAD = 12  # length, type, CRC
_IEND = _chunk(b"IEND", b"")


@functools.lru_cache(maxsize=4)
def sized_png_prefix(width: int, height: int, seed: int, size: int) -> tuple[bytes, hashlib._Hash]:
    """All of a sized PNG but its last `SIZED_TAIL_BYTES` (the per-file tag and IEND), and the
    SHA-256 state over it: every file of that size shares this prefix, so it is built once."""
    base = make_png(width, height, seed)[: -len(_IEND)]
    padding = size - len(base) - _CHUNK_OVERHEAD - SIZED_TAIL_BYTES
    if padding < 0:
        raise ValueError(f"a {width}x{height} PNG needs at least {size - padding} bytes, not {size}")
    # incompressible filler, as a real PNG's deflated pixels are
    prefix = base + _chunk(PADDING_CHUNK, random.Random(seed).randbytes(padding))
    return prefix, hashlib.sha256(prefix)


def _tag_chunk(tag: bytes) -> bytes:
    """A tEXt chunk that makes each file of the same size distinct (16 bytes of tag)."""
    return _chunk(b"tEXt", b"Comment\x00" + tag.ljust(16, b"\x00")[:16])


SIZED_TAIL_BYTES = len(_tag_chunk(b"")) + len(_IEND)


def sized_png_tail(tag: bytes) -> bytes:
    """The end of a sized PNG: the file's own tag, then IEND."""
    return _tag_chunk(tag) + _IEND


def sized_png(width: int, height: int, seed: int, size: int, tag: bytes = b"") -> bytes:
    """A valid PNG of `width` x `height` that is exactly `size` bytes long, distinct per `tag`."""
    prefix, _ = sized_png_prefix(width, height, seed, size)
    return prefix + sized_png_tail(tag)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; ValueError when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height
