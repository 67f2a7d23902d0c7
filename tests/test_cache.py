"""The result cache: hits, misses, time-to-live, LRU eviction by size, corrupt files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.cache import ResultCache
from bot.storage.connect import open_store
from bot.storage.images import ImageStore
from tests.fakes.png import make_png


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


pytestmark = pytest.mark.both_backends


@pytest.fixture
async def parts(tmp_path: Path, database_url: str):
    clock = Clock()
    store = await open_store(database_url, clock=clock)
    images = ImageStore(tmp_path / "cache")
    yield store, images, clock
    await store.close()


def cache_of(parts, *, ttl_hours: float = 24, max_bytes: int = 10**9) -> ResultCache:
    store, images, clock = parts
    return ResultCache(store, images, ttl=timedelta(hours=ttl_hours), max_bytes=max_bytes, utcnow=clock)


async def put_png(parts, cache: ResultCache, key: str, seed: int) -> str:
    _, images, _ = parts
    data = make_png(64, 64, seed=seed)
    sha = await images.put(data)
    await cache.put(key, sha, len(data), job_id=seed, request_id=f"req-{seed}")
    return sha


async def test_hit_returns_the_bytes_and_the_source(parts) -> None:
    cache = cache_of(parts)
    sha = await put_png(parts, cache, "k1", 1)
    hit = await cache.get("k1")
    assert hit is not None and hit.sha256 == sha and hit.image.kind == "png"
    assert (hit.source_job_id, hit.request_id) == (1, "req-1")
    assert await cache.get("other") is None


async def test_entries_expire_after_the_ttl(parts) -> None:
    cache = cache_of(parts, ttl_hours=24)
    await put_png(parts, cache, "k1", 1)
    parts[2].now += timedelta(hours=23, minutes=59)
    assert await cache.get("k1") is not None
    parts[2].now += timedelta(minutes=2)
    assert await cache.get("k1") is None
    assert await cache.prune() == 1
    assert (await cache.stats()).entries == 0


async def test_least_recently_used_are_evicted_past_the_size_cap(parts) -> None:
    size = len(make_png(64, 64, seed=1))
    cache = cache_of(parts, max_bytes=2 * size + 10)
    sha1 = await put_png(parts, cache, "k1", 1)
    parts[2].now += timedelta(seconds=1)
    await put_png(parts, cache, "k2", 2)
    parts[2].now += timedelta(seconds=1)
    assert await cache.get("k1") is not None  # k1 is now the most recently used
    parts[2].now += timedelta(seconds=1)
    await put_png(parts, cache, "k3", 3)
    assert await cache.get("k2") is None  # evicted: least recently used
    assert await cache.get("k1") is not None and await cache.get("k3") is not None
    assert (await cache.stats()).bytes <= 2 * size + 10
    assert parts[1].path_for(sha1).exists()


async def test_a_corrupt_or_missing_file_is_a_miss(parts) -> None:
    cache = cache_of(parts)
    sha = await put_png(parts, cache, "k1", 1)
    parts[1].path_for(sha).write_bytes(b"garbage")
    assert await cache.get("k1") is None
    # alone, the broken entry is dropped; on a store shared by machines, another may have the file
    assert (await cache.stats()).entries == (0 if parts[0].dialect == "sqlite" else 1)
    sha = await put_png(parts, cache, "k2", 2)
    parts[1].path_for(sha).unlink()
    assert await cache.get("k2") is None


async def test_clear_removes_entries_and_files(parts) -> None:
    cache = cache_of(parts)
    sha = await put_png(parts, cache, "k1", 1)
    assert await cache.clear() == 1
    assert not parts[1].path_for(sha).exists()


async def test_a_file_shared_by_two_keys_stays_until_both_go(parts) -> None:
    cache = cache_of(parts)
    sha = await put_png(parts, cache, "k1", 1)
    await cache.put("k2", sha, 10, job_id=2, request_id=None)
    await cache._drop(["k1"])
    assert parts[1].path_for(sha).exists()
    await cache._drop(["k2"])
    assert not parts[1].path_for(sha).exists()
