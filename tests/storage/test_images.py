"""The content-addressed image store: hashing a (10 MiB) image is CPU work and stays off the event loop."""

from __future__ import annotations

import hashlib
import threading
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


async def test_get_checks_the_hash_in_a_worker_thread(tmp_path: Path, hashing_threads: list[threading.Thread]) -> None:
    store = ImageStore(tmp_path)
    sha = hashlib.sha256(TEN_MIB).hexdigest()
    store.path_for(sha).parent.mkdir(parents=True)
    store.path_for(sha).write_bytes(TEN_MIB)
    assert await store.get(sha) == TEN_MIB
    assert hashing_threads and threading.main_thread() not in hashing_threads


async def test_putting_the_same_bytes_twice_keeps_one_file(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    assert await store.put(b"same") == await store.put(b"same") == hashlib.sha256(b"same").hexdigest()
    assert _files(tmp_path) == [hashlib.sha256(b"same").hexdigest()]


def _files(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.is_file()]
