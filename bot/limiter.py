"""The one gate every upstream HTTP attempt passes: concurrency, RPM and per-second limits.

The vendor limits the whole account per minute *and* per second, and enforces the minute
limit as a sliding window. A token bucket refills continuously, so after an idle spell it lets
a burst through that the server's window still counts (measured: 26 sent where 20 were
allowed, see docs/pitfalls.md). So the limiter keeps an exact log of start times and grants a
start only if, with ``margin_s`` added to each window for network jitter, fewer than ``rpm``
starts fall in the last minute and fewer than ``ceil(rpm / 60)`` in the last second.

A 429 pauses every start (``pause``), not just the job that saw it. Waiters are served FIFO:
an ``asyncio.Lock`` (FIFO in asyncio) is held by the one waiter at the head of the line.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.clock import Clock, wait_event
from bot.imaging.errors import RateLimited

log = logging.getLogger("imagine.limiter")


class Permit:
    """The right to make one upstream attempt. Release it when the attempt is over."""

    __slots__ = ("_limiter", "_released", "started_at")

    def __init__(self, limiter: UpstreamLimiter, started_at: float) -> None:
        self._limiter = limiter
        self._released = False
        self.started_at = started_at

    @property
    def released(self) -> bool:
        return self._released

    def release(self, *, used: bool = True) -> None:
        """Give the concurrency slot back (idempotent).

        ``used=False`` says no request was sent: the recorded start is forgotten too, so a
        permit that was never used does not cost a slot of the rate windows.
        """
        if not self._released:
            self._released = True
            self._limiter._release(self, used=used)

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class UpstreamLimiter:
    """Grants permits for upstream attempts; see the module docstring for the rules."""

    def __init__(
        self,
        concurrency: int,
        rpm: int,
        clock: Clock,
        margin_s: float = 0.05,
        *,
        expected_hold_s: float = 15.0,
        hold_alpha: float = 0.2,
        default_pause_s: float = 5.0,
    ) -> None:
        if concurrency < 1 or rpm < 1:
            raise ValueError("concurrency and rpm must be at least 1")
        self.concurrency = concurrency
        self.rpm = rpm
        self.per_second = math.ceil(rpm / 60)
        self.clock = clock
        self.margin_s = margin_s
        self.default_pause_s = default_pause_s
        #: exponential moving average of how long a permit is held (seconds), for estimates
        self.avg_hold_s = expected_hold_s
        self._alpha = hold_alpha
        self._starts: deque[float] = deque()  # start times, oldest first, pruned past 60 s + margin
        self._held: set[Permit] = set()
        self._paused_until = -math.inf
        self._changed = asyncio.Event()  # set on release and on pause changes
        self._lock = asyncio.Lock()

    # -- stats -----------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._held)

    def starts_in_last_minute(self) -> int:
        cutoff = self.clock.now() - 60.0
        return sum(1 for t in self._starts if t > cutoff)

    def pause_remaining(self) -> float:
        return max(0.0, self._paused_until - self.clock.now())

    def delay_until_ready(self) -> float:
        """Estimated seconds until a start could be granted; 0 if one could be granted now.

        When every concurrency slot is held, the estimate assumes the oldest holder finishes
        after ``avg_hold_s`` (0 if it is already overdue: expected any moment).
        """
        now = self.clock.now()
        delay = self._window_delay(now)
        if len(self._held) >= self.concurrency:
            oldest = min(p.started_at for p in self._held)
            delay = max(delay, oldest + self.avg_hold_s - now)
        return max(0.0, delay)

    # -- control ---------------------------------------------------------------------------

    def pause(self, seconds: float) -> None:
        """No start before now + ``seconds``. Extends an existing pause, never shortens it."""
        until = self.clock.now() + max(0.0, seconds)
        if until > self._paused_until:
            self._paused_until = until
            log.warning("upstream paused for %.1f s", seconds)
            self._changed.set()

    def pause_for(self, error: RateLimited) -> None:
        """Pause everyone for a 429's Retry-After (or a default when it named none)."""
        self.pause(error.retry_after if error.retry_after is not None else self.default_pause_s)

    async def acquire(self) -> Permit:
        """Wait (FIFO among callers) until every limit allows a start; record it and return."""
        async with self._lock:
            while True:
                now = self.clock.now()
                delay = self._window_delay(now)
                full = len(self._held) >= self.concurrency
                if not full and delay <= 0:
                    permit = Permit(self, now)
                    self._starts.append(now)
                    self._held.add(permit)
                    return permit
                # Only the lock holder waits on the event, so clearing it here loses nothing.
                self._changed.clear()
                await wait_event(self._changed, None if full else delay, self.clock)

    @asynccontextmanager
    async def permit(self) -> AsyncIterator[Permit]:
        permit = await self.acquire()
        try:
            yield permit
        finally:
            permit.release()

    def gate(self, first_permit: Permit | None = None) -> Gate:
        return Gate(self, first_permit)

    # -- internals -------------------------------------------------------------------------

    def _window_delay(self, now: float) -> float:
        """Seconds until the pause and both sliding windows allow one more start."""
        minute, second = 60.0 + self.margin_s, 1.0 + self.margin_s
        while self._starts and self._starts[0] <= now - minute:
            self._starts.popleft()
        ready = self._paused_until
        # A new start at T is allowed iff the rpm-th most recent start is at least a window ago.
        if len(self._starts) >= self.rpm:
            ready = max(ready, self._starts[-self.rpm] + minute)
        if len(self._starts) >= self.per_second:
            ready = max(ready, self._starts[-self.per_second] + second)
        return ready - now

    def _release(self, permit: Permit, *, used: bool) -> None:
        self._held.discard(permit)
        if used:
            held_for = self.clock.now() - permit.started_at
            self.avg_hold_s += self._alpha * (held_for - self.avg_hold_s)
        else:
            try:
                self._starts.remove(permit.started_at)  # equal times are interchangeable
            except ValueError:
                pass  # already pruned: it no longer counted anyway
        self._changed.set()


class Gate:
    """Wraps every upstream attempt of one job so that each one holds a permit.

    The scheduler acquires the first permit before it hands the job out (so a job only starts
    when the upstream can take it); ``attempt()`` uses that one first, then acquires a fresh
    permit for each retry. A ``RateLimited`` escaping an attempt pauses the whole limiter.
    Attempts must not be nested (with ``concurrency=1`` that would wait forever).
    """

    def __init__(self, limiter: UpstreamLimiter, first_permit: Permit | None = None) -> None:
        self._limiter = limiter
        self._first = first_permit
        self.attempts = 0
        #: how many ``RateLimited`` went through this gate (each one paused the limiter)
        self.rate_limited = 0

    @asynccontextmanager
    async def attempt(self) -> AsyncIterator[Permit]:
        permit, self._first = self._first, None
        if permit is None or permit.released:
            permit = await self._limiter.acquire()
        self.attempts += 1
        try:
            yield permit
        except RateLimited as exc:
            self.rate_limited += 1
            self._limiter.pause_for(exc)
            raise
        finally:
            permit.release()

    def close(self) -> None:
        """Give back a first permit no attempt used, without spending a window slot."""
        if self._first is not None:
            self._first.release(used=False)
            self._first = None
