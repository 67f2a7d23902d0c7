"""The result cache: never pay twice for the same picture.

Keyed by the preset's cache key (prompt, size, negative prompt, prompt_extend, watermark,
model). The bytes live in the content-addressed image store (`CACHE_DIR`, files written
atomically); the index lives in SQLite. Entries expire after `CACHE_TTL_HOURS`, and the least
recently used go first when the files pass `CACHE_MAX_MB`. A missing or corrupt file is a miss
(and its entry is dropped, except on a store shared by several machines, where the file may be
on another one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.storage.db import Store, iso
from bot.storage.images import ImageStore, StoredImage


@dataclass(frozen=True, slots=True)
class CacheHit:
    key: str
    sha256: str
    image: StoredImage
    source_job_id: int | None
    request_id: str | None


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    bytes: int
    hits: int  # delivered jobs answered from the cache
    oldest: str | None
    newest: str | None


class ResultCache:
    def __init__(
        self, store: Store, images: ImageStore, *, ttl: timedelta, max_bytes: int, utcnow: Callable[[], datetime]
    ) -> None:
        self._store = store
        self._images = images
        self._ttl = ttl
        self._max_bytes = max_bytes
        self._utcnow = utcnow

    async def get(self, key: str) -> CacheHit | None:
        row = await self._store.fetch_one(
            "SELECT sha256, source_job_id, request_id FROM image_cache WHERE key = ? AND created_at > ?",
            (key, self._expired_before()),
        )
        if row is None:
            return None
        image = await self._images.check(row["sha256"])  # checks the bytes against their hash
        if image is None:
            # On a store shared by several machines the file may simply live on another one: a
            # miss here, and the entry stays for the machine that has it. Alone, it is stale.
            if self._store.dialect != "postgresql":
                await self._drop([key])
            return None
        await self._store.write("UPDATE image_cache SET last_used_at = ? WHERE key = ?", (iso(self._utcnow()), key))
        return CacheHit(key, row["sha256"], image, row["source_job_id"], row["request_id"])

    async def put(self, key: str, sha256: str, size: int, *, job_id: int, request_id: str | None) -> None:
        now = iso(self._utcnow())
        await self._store.write(
            """
            INSERT INTO image_cache (key, sha256, bytes, source_job_id, request_id, created_at, last_used_at)
            VALUES (?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (key) DO UPDATE SET sha256 = excluded.sha256, bytes = excluded.bytes,
                source_job_id = excluded.source_job_id, request_id = excluded.request_id,
                created_at = excluded.created_at, last_used_at = excluded.last_used_at
            """,
            (key, sha256, size, job_id, request_id, now, now),
        )
        await self.prune()

    async def holds(self, sha256: str) -> bool:
        return await self._store.fetch_one("SELECT 1 FROM image_cache WHERE sha256 = ?", (sha256,)) is not None

    async def prune(self) -> int:
        """Drop expired entries, then the least recently used until the files fit the cap."""
        expired = await self._store.fetch_all(
            "SELECT key FROM image_cache WHERE created_at <= ?", (self._expired_before(),)
        )
        dropped = [row["key"] for row in expired]
        rows = await self._store.fetch_all(
            "SELECT key, bytes FROM image_cache WHERE created_at > ? ORDER BY last_used_at DESC, key",
            (self._expired_before(),),
        )
        total = 0
        for row in rows:  # most recently used first: keep them while they fit
            total += row["bytes"]
            if total > self._max_bytes:
                dropped.append(row["key"])
        await self._drop(dropped)
        return len(dropped)

    async def clear(self) -> int:
        rows = await self._store.fetch_all("SELECT key FROM image_cache")
        await self._drop([row["key"] for row in rows])
        return len(rows)

    async def stats(self) -> CacheStats:
        row = await self._store.fetch_one(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0), MIN(created_at), MAX(created_at) FROM image_cache"
        )
        hits = await self._store.fetch_one("SELECT COUNT(*) FROM jobs WHERE cache_hit = 1 AND state = 'delivered'")
        assert row is not None and hits is not None
        return CacheStats(int(row[0]), int(row[1]), int(hits[0]), row[2], row[3])

    async def _drop(self, keys: list[str]) -> None:
        """Remove entries, and their files unless another entry or an unfinished job still needs them."""
        for key in keys:
            row = await self._store.fetch_one("SELECT sha256 FROM image_cache WHERE key = ?", (key,))
            if row is None:
                continue
            await self._store.write("DELETE FROM image_cache WHERE key = ?", (key,))
            sha256 = row["sha256"]
            still_used = await self._store.fetch_one(
                "SELECT 1 FROM image_cache WHERE sha256 = ? UNION ALL SELECT 1 FROM jobs"
                " WHERE image_sha256 = ? AND state IN ('queued', 'submitting', 'generated')",
                (sha256, sha256),
            )
            if still_used is None:
                await self._images.delete(sha256)

    def _expired_before(self) -> str:
        return iso(self._utcnow() - self._ttl)
