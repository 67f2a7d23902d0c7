"""Never pay twice for one picture: answer from the result cache, follow an identical request in
flight, or lead (generate). This module owns that decision, for a request being admitted (the
service) and for a queued job about to run (the runner, e.g. after a restart).

The decision for one cache key is serialized (`choose` holds the key's lock until the job is
registered), so two identical requests arriving together cannot both lead. A follower waits
outside the queue and is answered when its leader lands (`land`): with the image, as a free
cache hit, or with the leader's failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bot.cache import CacheHit, ResultCache
from bot.config import Settings
from bot.gatekeeper import Gatekeeper
from bot.presets import ImageParams, cache_key


@dataclass(slots=True)
class Choice:
    """What to do with one request: `hit` (answer from the cache), `leader` (follow that job), or
    neither (generate; it leads its key when it has one)."""

    key: str | None
    hit: CacheHit | None
    leader: int | None
    _flights: Flights

    @property
    def free(self) -> bool:
        """No upstream call of its own: no queue slot and no money needed."""
        return self.hit is not None or self.leader is not None

    def lead(self, job_id: int) -> None:
        if self.key is not None:
            self._flights.lead(self.key, job_id)

    def follow(self, job_id: int) -> bool:
        """Join the leader's flight; False when it has landed meanwhile (decide again when it runs)."""
        assert self.key is not None and self.leader is not None
        return self._flights.follow(self.key, self.leader, job_id)


class ResultSharing:
    def __init__(
        self,
        settings: Settings,
        cache: ResultCache | None,
        gatekeeper: Gatekeeper | None,
        *,
        follow: bool = True,
    ) -> None:
        """`follow=False` on a queue shared by several processes: a follower waits in the memory of
        the process that admitted it, while its leader may run in another, whose image would never
        reach it. There identical requests in flight each run (a cache hit once the first lands)."""
        self._settings = settings
        self.cache = cache
        self._gate = gatekeeper
        self._follow = follow
        self._flights = Flights()

    async def key(self, params: ImageParams, model: str, guild_id: int | None, *, reroll: bool = False) -> str | None:
        """The request's cache key, or None: rerolls always generate, and the cache may be off
        (for everyone, or for this guild)."""
        if reroll or self.cache is None or self._settings.cache_ttl_hours <= 0:
            return None
        if guild_id is not None and self._gate is not None and not (await self._gate.policy(guild_id)).cache_enabled:
            return None
        return cache_key(params, model=model)

    @asynccontextmanager
    async def choose(self, key: str | None) -> AsyncIterator[Choice]:
        """Decide under the key's lock; the caller registers the job (`lead`/`follow`) before leaving."""
        if key is None or self.cache is None:
            yield Choice(None, None, None, self._flights)
            return
        async with self._flights.admitting(key):
            hit = await self.cache.get(key)
            # read after the await: a leader that landed meanwhile has put its image in the cache
            leader = self._flights.leader(key) if hit is None and self._follow else None
            yield Choice(key, hit, leader, self._flights)

    def key_of(self, job_id: int) -> str | None:
        """The key a leading job generates for."""
        return self._flights.key_of(job_id)

    async def publish(self, job_id: int, key: str | None, sha256: str, size: int, request_id: str | None) -> list[int]:
        """A new image: into the cache under `key`; returns the followers waiting on it."""
        if key is not None and self.cache is not None:
            await self.cache.put(key, sha256, size, job_id=job_id, request_id=request_id)
        return self._flights.land(job_id)

    def land(self, job_id: int) -> list[int]:
        """The job stops leading (it failed, or was withdrawn); returns the followers waiting on it."""
        return self._flights.land(job_id)

    async def holds(self, sha256: str) -> bool:
        return self.cache is not None and await self.cache.holds(sha256)


class Flights:
    """Identical requests in flight: one leader per key, and who follows it.

    Admission for one key is serialized (`admitting`), so two identical requests arriving together
    cannot both lead.
    """

    def __init__(self) -> None:
        self._leaders: dict[str, int] = {}
        self._followers: dict[str, list[int]] = {}
        self._key_of: dict[int, str] = {}
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # key -> (lock, [users])

    @asynccontextmanager
    async def admitting(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]

    def leader(self, key: str) -> int | None:
        return self._leaders.get(key)

    def lead(self, key: str, job_id: int) -> None:
        self._leaders[key] = job_id
        self._key_of[job_id] = key

    def follow(self, key: str, leader: int, job_id: int) -> bool:
        """Wait on `leader`'s image; False if it is no longer in flight (it landed meanwhile)."""
        if self._leaders.get(key) != leader:
            return False
        self._followers.setdefault(key, []).append(job_id)
        return True

    def key_of(self, job_id: int) -> str | None:
        return self._key_of.get(job_id)

    def land(self, job_id: int) -> list[int]:
        """The leader has its image (or failed): close the flight, return who was waiting."""
        key = self._key_of.pop(job_id, None)
        if key is None or self._leaders.get(key) != job_id:
            return []
        del self._leaders[key]
        return self._followers.pop(key, [])
