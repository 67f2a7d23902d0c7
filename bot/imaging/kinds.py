"""What kind of image some bytes are, by their magic bytes alone (never by what a server claims)."""

from __future__ import annotations

#: enough leading bytes to tell every kind apart (WebP needs 12)
SNIFF_BYTES = 12


def sniff_kind(data: bytes) -> str | None:
    """The image type by its magic bytes ("png", "jpeg" or "webp"), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None
