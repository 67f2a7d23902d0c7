"""The one gate every upstream HTTP attempt passes: concurrency, RPM and per-second limits.

The vendor limits the whole account per minute *and* per second, and enforces the minute
limit as a sliding window. A token bucket refills continuously, so after an idle spell it lets
a burst through that the server's window still counts (measured: 26 sent where 20 were
allowed, see docs/pitfalls.md). So the limiter keeps an exact log of start times and grants a
start only if, with ``margin_s`` added to each window, fewer than ``rpm`` starts fall in the
last minute and fewer than ``ceil(rpm / 60)`` in the last second.

A start is what the provider counts: a request arriving. So a start is stamped when the request
is handed to the network (``Permit.sent()``, called by the image client as the request's
headers start to go out), not when the permit is granted: between the two a job reads its row
and waits for the store's write lock, sometimes for hundreds of milliseconds. A permit granted
but not yet sent counts as starting *now* (it may leave at any moment), and one released without
being sent never counted. ``margin_s`` (UPSTREAM_WINDOW_MARGIN_MS) is then only what is left between our
stamp and the provider's clock: the request's transit, and jitter between the two clocks' views.

A 429 pauses every start (``pause``), not just the job that saw it. Waiters are served FIFO:
an ``asyncio.Lock`` (FIFO in asyncio) is held by the one waiter at the head of the line.

Every process using the same store shares one budget (``SharedBudget`` in
bot/storage/upstream.py): a grant is then also checked against, and recorded in, the store.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from bot.clock import Clock, wait_event
from bot.imaging.errors import RateLimited
from bot.rate_windows import Limits, LocalView, window_delay

if TYPE_CHECKING:
    from bot.storage.upstream import SharedBudget

log = logging.getLogger("imagine.limiter")

#: how often a waiter looks again when only other processes hold the budget (they cannot wake it)
SHARED_POLL_S = 0.1
#: float noise in "is the window open yet": a microsecond early is on time
_EPSILON_S = 1e-6


class Permit:
    """The right to make one upstream attempt. Stamp it when the request leaves (``sent``);
    release it when the attempt is over."""

    __slots__ = ("_limiter", "_released", "granted_at", "not_before", "sent_at", "shared_id")

    def __init__(
        self, limiter: UpstreamLimiter, granted_at: float, shared_id: int | None = None, not_before: float = -math.inf
    ) -> None:
        self._limiter = limiter
        self._released = False
        self.granted_at = granted_at
        #: the request may not leave before this (a permit granted ahead of its window: lead_s)
        self.not_before = max(granted_at, not_before)
        self.sent_at: float | None = None
        self.shared_id = shared_id  # its row in the shared budget, if any

    @property
    def released(self) -> bool:
        return self._released

    def sent(self) -> None:
        """The request is being handed to the network now: this is the start the provider counts."""
        if self.sent_at is None and not self._released:
            self.sent_at = self._limiter.clock.now()
            self._limiter._on_sent(self)

    def release(self) -> None:
        """Give the concurrency slot back (idempotent). A permit never sent costs no window slot."""
        if not self._released:
            self._released = True
            self._limiter._release(self)

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
        shared: SharedBudget | None = None,
        lead_s: float = 0.0,
    ) -> None:
        """`lead_s`: a start held back only by the rate windows (or a pause) may be granted this
        long before they open; its request still leaves no earlier (Gate.attempt waits), so the
        work between permit and request (claiming, reading and marking the job) overlaps the wait
        instead of delaying every start by it."""
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
        self._starts: list[float] = []  # this process's stamped starts, oldest first, pruned past a minute
        self._held: set[Permit] = set()
        self._paused_until = -math.inf
        self._changed = asyncio.Event()  # set on a stamp, a release and a pause change
        self._lock = asyncio.Lock()
        self._shared = shared
        self.lead_s = max(0.0, lead_s)

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
            oldest = min(p.granted_at for p in self._held)
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
            if self._shared is not None:
                self._shared.pause(seconds)

    def pause_for(self, error: RateLimited) -> None:
        """Pause everyone for a 429's Retry-After (or a default when it named none)."""
        self.pause(error.retry_after if error.retry_after is not None else self.default_pause_s)

    async def acquire(self) -> Permit:
        """Wait (FIFO among callers) until every limit allows a start; return the permit."""
        async with self._lock:
            while True:
                # Only the lock holder waits on the event, so clearing it here loses nothing.
                self._changed.clear()
                now = self.clock.now()
                full = len(self._held) >= self.concurrency
                delay = self._window_delay(now)
                timeout: float | None = None if full else delay - self.lead_s
                if not full and delay <= self.lead_s + _EPSILON_S:
                    if self._shared is None:
                        return self._grant(now, None, now + delay)
                    verdict = await self._shared.try_grant(self.limits, self.local_view(), self.lead_s)
                    if verdict.permit_id is not None:
                        now = self.clock.now()
                        return self._grant(now, verdict.permit_id, now + verdict.delay)
                    # another process holds the budget: it cannot wake us, so look again soon
                    left = verdict.delay - self.lead_s
                    timeout = SHARED_POLL_S if verdict.full else min(max(left, 0.0), SHARED_POLL_S)
                await wait_event(self._changed, timeout, self.clock)

    @asynccontextmanager
    async def permit(self) -> AsyncIterator[Permit]:
        permit = await self.acquire()
        try:
            yield permit
        finally:
            permit.release()

    def gate(self, first_permit: Permit | None = None) -> Gate:
        return Gate(self, first_permit)

    # -- what the shared budget reads of this process ---------------------------------------

    @property
    def limits(self) -> Limits:
        return Limits(self.concurrency, self.rpm, self.per_second, self.margin_s)

    def local_view(self) -> LocalView:
        """What this process holds and has started, on its own clock."""
        now = self.clock.now()
        self._window_delay(now)  # prunes
        pending = tuple(p.not_before for p in self._held if p.sent_at is None)
        return LocalView(now, len(self._held), tuple(self._starts), pending, self._paused_until)

    # -- internals -------------------------------------------------------------------------

    def _grant(self, now: float, shared_id: int | None, not_before: float) -> Permit:
        permit = Permit(self, now, shared_id, not_before)
        self._held.add(permit)
        return permit

    def _window_delay(self, now: float) -> float:
        minute = 60.0 + self.margin_s
        first = bisect.bisect_right(self._starts, now - minute)
        if first:
            del self._starts[:first]
        pending = [p.not_before for p in self._held if p.sent_at is None]
        return window_delay(
            self._starts,
            pending,
            now,
            rpm=self.rpm,
            per_second=self.per_second,
            margin_s=self.margin_s,
            paused_until=self._paused_until,
        )

    def _on_sent(self, permit: Permit) -> None:
        assert permit.sent_at is not None
        bisect.insort(self._starts, permit.sent_at)
        self._changed.set()  # a pending permit counted as "now"; its real time may free a slot sooner
        if self._shared is not None and permit.shared_id is not None:
            self._shared.stamp(permit.shared_id)

    def _release(self, permit: Permit) -> None:
        self._held.discard(permit)
        if permit.sent_at is not None:
            held_for = self.clock.now() - permit.granted_at
            self.avg_hold_s += self._alpha * (held_for - self.avg_hold_s)
        self._changed.set()
        if self._shared is not None and permit.shared_id is not None:
            self._shared.release(permit.shared_id)


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
        self._current: Permit | None = None
        self.attempts = 0
        #: how many ``RateLimited`` went through this gate (each one paused the limiter)
        self.rate_limited = 0
        self._sent = False
        #: no request will be made any more (a cache hit, or only the delivery is left)
        self.closed = False

    @property
    def sent(self) -> bool:
        """Whether a request of this job has been handed to the network (it may be billed)."""
        return self._sent or (self._current is not None and self._current.sent_at is not None)

    @asynccontextmanager
    async def attempt(self) -> AsyncIterator[Permit]:
        permit, self._first = self._first, None
        if permit is None or permit.released:
            permit = await self._limiter.acquire()
        early = permit.not_before - self._limiter.clock.now()
        if early > 0:  # granted ahead of its window (lead_s): the request leaves when it opens
            await self._limiter.clock.sleep(early)
        self.attempts += 1
        self._current = permit
        try:
            yield permit
        except RateLimited as exc:
            self.rate_limited += 1
            self._limiter.pause_for(exc)
            raise
        finally:
            self._sent = self._sent or permit.sent_at is not None
            self._current = None
            permit.release()

    def close(self) -> None:
        """Nothing more to send: give back a first permit no attempt used (it never counted)."""
        self.closed = True
        if self._first is not None:
            self._first.release()
            self._first = None
