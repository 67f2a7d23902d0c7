"""Readiness (/readyz): may this process be counted on to take requests and get images out?

Four checks, each with a sentence saying why it fails:
- gateway: connected to Discord, every shard of this process open (a pure worker has none);
- store: a real write commits within STORE_PROBE_TIMEOUT_S (bot/storage/health.py);
- dispatcher: the dispatch loop runs and is healthy, and the service still accepts requests;
- upstream: not paused for longer than LONG_PAUSE_S. A 429's Retry-After pauses every start;
  a pause that long (UPSTREAM_RETRY_AFTER_CAP_S is 60 s by default) means the account is
  throttled or out of balance, and requests admitted meanwhile only wait.

Liveness (/livez) is simpler and lives in bot/ops_server.py: the event loop answered at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.storage.health import probe_write

if TYPE_CHECKING:
    from bot.limiter import UpstreamLimiter
    from bot.pipeline import Pipeline
    from bot.service import GenerationService
    from bot.storage.db import Store

#: a pause of every upstream start longer than this makes the process unready
LONG_PAUSE_S = 60.0
#: the store's probe write must commit within this (SQLite waits up to 5 s for a busy write lock)
STORE_PROBE_TIMEOUT_S = 2.0
_DETAIL_MAX_CHARS = 200


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


#: the gateway check's verdict, from the Discord side (bot/app.py): (connected, why)
GatewayStatus = Callable[[], tuple[bool, str]]


class Readiness:
    def __init__(
        self,
        gateway: GatewayStatus,
        pipeline: Callable[[], Pipeline | None],
        *,
        probe_timeout_s: float = STORE_PROBE_TIMEOUT_S,
        long_pause_s: float = LONG_PAUSE_S,
    ) -> None:
        self._gateway = gateway
        self._pipeline = pipeline
        self._probe_timeout_s = probe_timeout_s
        self._long_pause_s = long_pause_s
        self._probe: asyncio.Task[None] | None = None  # at most one probe write at a time

    async def checks(self) -> list[Check]:
        ok, why = self._gateway()
        results = [Check("gateway", ok, why)]
        pipeline = self._pipeline()
        if pipeline is None:
            why = "the pipeline is not open (starting, or stopped)"
            return results + [Check(name, False, why) for name in ("store", "dispatcher", "upstream")]
        results.append(await self._store(pipeline.store))
        results.append(_dispatcher(pipeline.service))
        results.append(self._upstream(pipeline.limiter))
        return results

    def close(self) -> None:
        """Abandon a probe write still waiting (the store is closing)."""
        if self._probe is not None:
            self._probe.cancel()

    async def _store(self, store: Store) -> Check:
        # A probe stuck behind another holder of the write lock is waited for again by the next
        # check instead of stacking a second write behind it.
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(probe_write(store))
            self._probe.add_done_callback(_retrieve)
        probe = self._probe  # another check may start the next one while this one waits
        done, _ = await asyncio.wait({probe}, timeout=self._probe_timeout_s)
        if not done:
            within = f"{self._probe_timeout_s:g} s"
            return Check("store", False, f"a write did not commit within {within} (is the write lock held?)")
        error = None if probe.cancelled() else probe.exception()
        if probe.cancelled() or error is not None:
            what = "cancelled" if error is None else f"{type(error).__name__}: {error}"
            return Check("store", False, f"a write failed: {what}"[:_DETAIL_MAX_CHARS])
        return Check("store", True, "a write committed")

    def _upstream(self, limiter: UpstreamLimiter) -> Check:
        left = limiter.pause_remaining()
        if left > self._long_pause_s:
            why = f"a 429's Retry-After, longer than {self._long_pause_s:g} s"
            return Check("upstream", False, f"every upstream start is paused for {left:.0f} s more ({why})")
        return Check("upstream", True, f"paused for {left:.1f} s more" if left > 0 else "not paused")


def _dispatcher(service: GenerationService) -> Check:
    scheduler = service.scheduler
    if not service.accepting:
        return Check("dispatcher", False, "stopping: new requests are refused")
    if not scheduler.dispatching:
        return Check("dispatcher", False, "the dispatch loop is not running: no job can start")
    if not scheduler.healthy:
        error = scheduler.last_error
        return Check("dispatcher", False, f"the dispatch loop keeps failing: {error!r}"[:_DETAIL_MAX_CHARS])
    return Check("dispatcher", True, "the dispatch loop is running")


def _retrieve(task: asyncio.Task[None]) -> None:
    """Read a probe's outcome even if no check waited for it (no 'exception never retrieved')."""
    if not task.cancelled():
        task.exception()
