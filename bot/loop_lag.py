"""Event-loop lag: how late the loop wakes a short sleep. Every coroutine of the bot shares one
loop; work that does not yield (a blocking call, a long computation) delays every interaction's
acknowledgement by as much (docs/pitfalls.md: 25 ms of blocking before the ACK cost 425 of 600
interactions at 50/s). The overshoot of each sleep goes into a histogram.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import Histogram

#: short enough to catch stalls of a fraction of a second, long enough to cost nothing
INTERVAL_S = 0.25


class LoopLagMonitor:
    def __init__(self, histogram: Histogram, interval_s: float = INTERVAL_S) -> None:
        self._histogram = histogram
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self._interval_s)
            self._histogram.observe(max(0.0, loop.time() - started - self._interval_s))
