"""Images on disk, addressed by the SHA-256 of their bytes; the bot never holds one in memory.

A generated image is streamed into a spool file here (`spool()`: hashed as it is written) and
renamed into the store once complete (a rename, not a copy), before delivery: a delivery that
fails on Discord's side (or a restart) is retried from this file, never by generating again, and
Discord gets the file itself, read from disk in small pieces. A spool file that is not committed
is deleted, whatever went wrong. Every file operation runs in a worker thread, off the event loop.
A missing or corrupt file reads as None (the caller downloads again or fails cleanly).

A job delivers through an `OpenImage`: the file as it was written or checked, kept open until the
delivery ends. Identical bytes share one file, and another job may release it meanwhile (it
checks the jobs that reference the file, and a job references it only once its download is in
the store); an open file stays readable after its name is removed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bot.imaging.kinds import SNIFF_BYTES, sniff_kind

#: files are read back (to check their hash) this much at a time
READ_CHUNK = 1024 * 1024
#: a spool file this old belongs to no download any more (one lasts 3 minutes at most): a process
#: killed mid-download left it, and the next start removes it
SPOOL_STALE_S = 15 * 60


@dataclass(frozen=True, slots=True)
class StoredImage:
    """An image in the store: a file whose bytes match `sha256`, and what kind of image they are."""

    sha256: str
    path: Path
    size: int
    kind: str  # "png" | "jpeg" | "webp"

    @property
    def extension(self) -> str:
        return "jpg" if self.kind == "jpeg" else self.kind

    @property
    def content_type(self) -> str:
        return f"image/{self.kind}"


@dataclass(frozen=True, slots=True)
class OpenImage(StoredImage):
    """A stored image with its file open for reading (at any position: seek before reading). Its
    bytes stay readable until `close`, whatever happens to `path` meanwhile."""

    file: BinaryIO

    async def close(self) -> None:
        # shielded: a cancelled delivery still closes its file (the thread runs to the end)
        await asyncio.shield(asyncio.to_thread(self.file.close))


class Spool:
    """One image on its way into the store: a temp file under the store's spool folder, hashed as
    it is written. `commit` renames it into the store; the store's `spool()` deletes it otherwise."""

    def __init__(self, store: ImageStore, path: Path, handle: BinaryIO) -> None:
        self.path = path
        self.written = 0
        self.file = handle  # opened for writing and reading: once committed, the image is read from it
        self._store = store
        self._hash = hashlib.sha256()
        self.committed = False

    async def write(self, chunks: Iterable[bytes]) -> None:
        """Append the chunks (hashing 10 MiB is CPU work too: both in a worker thread)."""
        await asyncio.to_thread(self.write_now, chunks)

    def write_now(self, chunks: Iterable[bytes]) -> None:
        """`write` for code already in a worker thread."""
        for chunk in chunks:
            self._hash.update(chunk)
            self.file.write(chunk)
            self.written += len(chunk)

    async def commit(self, kind: str) -> OpenImage:
        """Durable on disk, then renamed to its content address: the stored image (of `kind`, which
        the caller checked on the first bytes), its file still open, now the caller's to close."""
        sha256 = await asyncio.to_thread(self.commit_now)
        return OpenImage(sha256, self._store.path_for(sha256), self.written, kind, self.file)

    def commit_now(self) -> str:
        """`commit` for code already in a worker thread; the SHA-256 (the file stays open)."""
        self.file.flush()
        os.fsync(self.file.fileno())
        sha256 = self._hash.hexdigest()
        path = self._store.path_for(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, path)  # the same bytes may be there already: same content, one file
        self.file.seek(0)
        self.committed = True
        return sha256

    def discard(self) -> None:
        """Close and delete the spool file (blocking: from a worker thread)."""
        self.file.close()
        self.path.unlink(missing_ok=True)


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        # under the root, so that committing is a rename within one file system; the content
        # addresses are two hex digits deep, so "spool" is never one of them
        self.spool_dir = root / "spool"

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    @asynccontextmanager
    async def spool(self) -> AsyncIterator[Spool]:
        """A spool file for one image; deleted on leaving unless committed, whatever happened."""
        spool = await asyncio.to_thread(self._new_spool)
        try:
            yield spool
        finally:
            if not spool.committed:
                # shielded: a cancelled download still removes its file (the thread runs to the end)
                await asyncio.shield(asyncio.to_thread(spool.discard))

    async def put(self, data: bytes) -> str:
        """Store bytes already in memory (small ones: tests, tools); returns their SHA-256."""
        async with self.spool() as spool:
            await spool.write([data])
            sha256 = await asyncio.to_thread(spool.commit_now)
            await asyncio.to_thread(spool.file.close)
            return sha256

    async def open_image(self, sha256: str) -> OpenImage | None:
        """The stored image, its bytes checked against the hash (read in pieces through the file
        kept open, so what was checked is what is read); None if it is missing, torn or tampered
        with (then deleted), or not an image. The caller closes it."""
        return await asyncio.to_thread(self._open_checked, sha256)

    async def check(self, sha256: str) -> StoredImage | None:
        """`open_image` without keeping the file open: whether the image is there, intact."""
        image = await self.open_image(sha256)
        if image is None:
            return None
        await image.close()
        return StoredImage(image.sha256, image.path, image.size, image.kind)

    async def delete(self, sha256: str) -> None:
        await asyncio.to_thread(self.path_for(sha256).unlink, missing_ok=True)

    async def sweep_spool(self, older_than_s: float = SPOOL_STALE_S) -> int:
        """Remove spool files left by a process killed mid-download; how many were removed."""
        return await asyncio.to_thread(self._sweep, older_than_s)

    def _new_spool(self) -> Spool:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.spool_dir, prefix="download-")
        return Spool(self, Path(name), os.fdopen(fd, "w+b"))

    def _open_checked(self, sha256: str) -> OpenImage | None:
        path = self.path_for(sha256)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return None
        try:
            digest, size, head = hashlib.sha256(), 0, b""
            while chunk := handle.read(READ_CHUNK):
                if size == 0:
                    head = chunk[:SNIFF_BYTES]
                digest.update(chunk)
                size += len(chunk)
            kind = sniff_kind(head)
            if digest.hexdigest() != sha256:  # torn or tampered: treat as missing
                path.unlink(missing_ok=True)
            elif kind is not None:
                handle.seek(0)
                return OpenImage(sha256, path, size, kind, handle)
        except BaseException:
            handle.close()
            raise
        handle.close()
        return None

    def _sweep(self, older_than_s: float) -> int:
        removed = 0
        cutoff = time.time() - older_than_s
        for path in self.spool_dir.glob("download-*") if self.spool_dir.exists() else ():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # finished meanwhile
        return removed
