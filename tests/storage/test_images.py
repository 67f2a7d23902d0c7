"""The content-addressed image store: hashing a (10 MiB) image is CPU work and stays off the event loop."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.storage import images
from bot.storage.images import ImageStore

TEN_MIB = b"\x89PNG\r\n\x1a\n" + bytes(10 * 1024 * 1024 - 8)


@pytest.fixture
def hashing_threads(monkeypatch: pytest.MonkeyPatch) -> list[threading.Thread]:
    """The threads bot.storage.images hashes in (the real sha256 underneath)."""
    seen: list[threading.Thread] = []

    def sha256(data: bytes = b"") -> hashlib._Hash:
        seen.append(threading.current_thread())
        return hashlib.sha256(data)

    monkeypatch.setattr(images, "hashlib", SimpleNamespace(sha256=sha256))
    return seen


async def test_put_hashes_in_a_worker_thread_not_on_the_event_loop(
    tmp_path: Path, hashing_threads: list[threading.Thread]
) -> None:
    store = ImageStore(tmp_path)
    sha = await store.put(TEN_MIB)
    assert sha == hashlib.sha256(TEN_MIB).hexdigest()
    assert store.path_for(sha).read_bytes() == TEN_MIB
    assert hashing_threads, "put() did not hash through bot.storage.images.hashlib"
    assert threading.main_thread() not in hashing_threads


async def test_open_image_checks_the_hash_in_a_worker_thread(
    tmp_path: Path, hashing_threads: list[threading.Thread]
) -> None:
    store = ImageStore(tmp_path)
    sha = hashlib.sha256(TEN_MIB).hexdigest()
    store.path_for(sha).parent.mkdir(parents=True)
    store.path_for(sha).write_bytes(TEN_MIB)
    image = await store.open_image(sha)
    assert image is not None and (image.path, image.size, image.kind) == (store.path_for(sha), len(TEN_MIB), "png")
    assert image.file.read() == TEN_MIB  # open at its start: what was checked is what is read
    await image.close()
    assert hashing_threads and threading.main_thread() not in hashing_threads


async def test_a_committed_spool_file_is_renamed_into_the_store_not_copied(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    async with store.spool() as spool:
        await spool.write([TEN_MIB[:4096], TEN_MIB[4096:]])
        spooled = spool.path
        inode = spooled.stat().st_ino
        image = await spool.commit("png")
    assert image.file.read() == TEN_MIB  # the file written, open at its start
    await image.close()
    assert image.sha256 == hashlib.sha256(TEN_MIB).hexdigest() and image.size == len(TEN_MIB)
    assert image.path == store.path_for(image.sha256) and image.path.stat().st_ino == inode
    assert not spooled.exists() and list(store.spool_dir.iterdir()) == []


async def test_a_spool_file_not_committed_is_deleted_whatever_happened(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    paths = []
    with pytest.raises(RuntimeError):
        async with store.spool() as spool:
            paths.append(spool.path)
            await spool.write([b"partial"])
            raise RuntimeError("the download failed")
    async with store.spool() as spool:  # left without a commit and without an error
        paths.append(spool.path)
    assert not any(path.exists() for path in paths) and _files(tmp_path) == []


async def test_stale_spool_files_are_swept_and_fresh_ones_kept(tmp_path: Path) -> None:
    """A process killed mid-download leaves its spool file; the next start removes it, but not a
    download another process (sharing CACHE_DIR) is running now."""
    store = ImageStore(tmp_path)
    store.spool_dir.mkdir(parents=True)
    stale, fresh = store.spool_dir / "download-stale", store.spool_dir / "download-fresh"
    stale.write_bytes(b"left by a killed process")
    fresh.write_bytes(b"being written")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    assert await store.sweep_spool() == 1
    assert not stale.exists() and fresh.exists()


async def test_putting_the_same_bytes_twice_keeps_one_file(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    assert await store.put(b"same") == await store.put(b"same") == hashlib.sha256(b"same").hexdigest()
    assert _files(tmp_path) == [hashlib.sha256(b"same").hexdigest()]


def _files(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.is_file()]
