"""Downloaded images on disk, addressed by the SHA-256 of their bytes.

A generated image is written here before delivery, so a delivery that fails on Discord's side
(or a restart) is retried from these bytes, never by generating again. Writes are atomic
(temp file + rename); every file operation runs in a worker thread, off the event loop. A
missing or corrupt file reads as None (the caller downloads again or fails cleanly).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    async def put(self, data: bytes) -> str:
        """Store the bytes; returns their SHA-256 (hashing 10 MiB is CPU work: done in the thread too)."""
        return await asyncio.to_thread(self._put, data)

    async def get(self, sha256: str) -> bytes | None:
        return await asyncio.to_thread(self._read, self.path_for(sha256), sha256)

    async def delete(self, sha256: str) -> None:
        await asyncio.to_thread(self.path_for(sha256).unlink, missing_ok=True)

    def _put(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        self._write(self.path_for(sha256), data)
        return sha256

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        if path.exists():  # same bytes already stored
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    @staticmethod
    def _read(path: Path, sha256: str) -> bytes | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != sha256:  # torn or tampered: treat as missing
            path.unlink(missing_ok=True)
            return None
        return data
