"""Reading a delivered image back in a test (the bot itself never reads one whole)."""

from __future__ import annotations

from bot.storage.images import OpenImage


def read_image(image: OpenImage) -> bytes:
    """All of the image, through its open file (blocking: call it in a worker thread)."""
    image.file.seek(0)
    return image.file.read()
