"""A fake ``Clock`` for tests: time moves only when the test advances it.

``sleep(d)`` parks the caller until ``advance`` reaches its deadline. ``advance`` wakes
sleepers one at a time, in deadline order, and lets the event loop run between wake-ups, so
whatever a wake-up triggers (a release, a new sleep with an earlier deadline) happens at the
right fake time before the next sleeper is woken.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


class FakeClock:
    def __init__(self, start: float = 1000.0, *, settle_rounds: int = 40) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._settle_rounds = settle_rounds

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    def next_deadline(self) -> float | None:
        """The earliest deadline of a sleeper still waiting (cancelled ones are dropped)."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    @property
    def sleeping(self) -> int:
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    async def settle(self) -> None:
        """Let the loop run until ready callbacks chained off the last event have run."""
        for _ in range(self._settle_rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper due on the way, in order."""
        target = self._now + seconds
        await self.settle()
        while (deadline := self.next_deadline()) is not None and deadline <= target:
            _, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            fut.set_result(None)
            await self.settle()
        self._now = target
        await self.settle()

    async def advance_to(self, when: float) -> None:
        await self.advance(max(0.0, when - self._now))

    async def run_until(
        self, predicate: Callable[[], bool], max_advance: float = 3600.0, step: float | None = None
    ) -> float:
        """Advance (to each next deadline, or by ``step``) until ``predicate()``; return elapsed.

        Fails the test if the predicate is still false after ``max_advance`` seconds, or if
        nothing sleeps any more and nothing else could make it true.
        """
        start = self._now
        await self.settle()
        while not predicate():
            if self._now - start >= max_advance:
                raise AssertionError(f"condition not met within {max_advance} fake seconds")
            if step is not None:
                await self.advance(min(step, start + max_advance - self._now))
                continue
            deadline = self.next_deadline()
            if deadline is None:
                raise AssertionError("condition not met and nothing is sleeping")
            await self.advance_to(min(deadline, start + max_advance))
        return self._now - start
