"""What `/imagine-admin status` reports about one guild (no discord imports): how long this
process has been up, the guild's queue, the upstream's health and the guild's spend today.

Sources, chosen so that several processes on one PostgreSQL tell an admin the same thing about
the guild: the queue and the spend are read from the store (every process's jobs); the
upstream's health (errors, 429s, pause, requests in flight, starts) is this process's own view,
from its limiter and its `UpstreamHealth`. The embed says which is which.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.config import Settings
from bot.contracts import guild_key
from bot.gatekeeper import Gatekeeper
from bot.limiter import UpstreamLimiter
from bot.limits import periods
from bot.scheduler import Scheduler
from bot.storage.db import Store
from bot.storage.reports import counters, guild_queue
from bot.upstream_health import OutcomeCounts, UpstreamHealth


@dataclass(frozen=True, slots=True)
class QueueFigures:
    waiting: int
    running: int
    queue_max: int  # GUILD_QUEUE_MAX
    oldest_wait_s: float | None  # how long the longest-waiting job has waited; None if none waits
    new_request_wait_s: float  # the scheduler's estimate for a request the admin made now


@dataclass(frozen=True, slots=True)
class UpstreamFigures:
    last_hour: OutcomeCounts
    last_day: OutcomeCounts
    pause_remaining_s: float
    in_flight: int
    concurrency: int
    starts_last_minute: int
    rpm: int


@dataclass(frozen=True, slots=True)
class SpendFigures:
    today_fen: int  # spent today, with what accepted jobs have reserved (the budget counts both)
    daily_budget_fen: int | None  # None: no cap
    resets_at: datetime  # the guild's next midnight, UTC
    timezone: str


@dataclass(frozen=True, slots=True)
class GuildStatus:
    uptime_s: float
    started_at: datetime  # UTC
    shared_queue: bool  # several processes share the queue (PostgreSQL)
    queue: QueueFigures
    upstream: UpstreamFigures
    spend: SpendFigures


class StatusReader:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        scheduler: Scheduler,
        limiter: UpstreamLimiter,
        gatekeeper: Gatekeeper,
        health: UpstreamHealth,
        shared_queue: bool,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._store = store
        self._scheduler = scheduler
        self._limiter = limiter
        self._gate = gatekeeper
        self.health = health
        self._shared_queue = shared_queue
        self._monotonic = monotonic
        # the pipeline opens as the bot process starts: its uptime is this object's age
        self._started = monotonic()
        self._started_at = datetime.now(UTC)

    async def guild(self, guild_id: int, requester: str) -> GuildStatus:
        """The status of one guild; `requester` (the admin asking) for the wait of a new request."""
        return GuildStatus(
            uptime_s=self._monotonic() - self._started,
            started_at=self._started_at,
            shared_queue=self._shared_queue,
            queue=await self._queue(guild_id, requester),
            upstream=self._upstream(),
            spend=await self._spend(guild_id),
        )

    async def _queue(self, guild_id: int, requester: str) -> QueueFigures:
        found = await guild_queue(self._store, guild_id)
        oldest = None
        if found.oldest_queued_at is not None:
            waited = self._store.clock() - datetime.fromisoformat(found.oldest_queued_at)
            oldest = max(0.0, waited.total_seconds())
        return QueueFigures(
            waiting=found.waiting,
            running=found.running,
            queue_max=self._settings.guild_queue_max,
            oldest_wait_s=oldest,
            new_request_wait_s=self._scheduler.wait_for_new_job(guild_key(guild_id), requester),
        )

    def _upstream(self) -> UpstreamFigures:
        limiter = self._limiter
        return UpstreamFigures(
            last_hour=self.health.last_hour(),
            last_day=self.health.last_day(),
            pause_remaining_s=limiter.pause_remaining(),
            in_flight=limiter.in_flight,
            concurrency=limiter.concurrency,
            starts_last_minute=limiter.starts_in_last_minute(),
            rpm=limiter.rpm,
        )

    async def _spend(self, guild_id: int) -> SpendFigures:
        """Today in the guild's own time zone, from the very counter its daily budget is held to."""
        policy = await self._gate.policy(guild_id)
        current = periods(self._gate.now(), policy.timezone)
        used = await counters(self._store, [("guild_day_fen", str(guild_id), current.day)])
        return SpendFigures(
            today_fen=used["guild_day_fen"],
            daily_budget_fen=policy.daily_budget_fen,
            resets_at=current.day_resets_at,
            timezone=policy.timezone,
        )
