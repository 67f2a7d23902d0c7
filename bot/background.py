"""Fire-and-forget work (progress edits, deliveries of resumed jobs) that is still tracked.

Tasks are kept referenced until they end (asyncio only keeps weak references) and can be
awaited for a bounded time at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

log = logging.getLogger("imagine.service")


class Background:
    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def notify(self, awaitable: Awaitable[None]) -> None:
        """Best effort (progress messages): a failure is logged and never fails the job."""

        async def guarded() -> None:
            try:
                await awaitable
            except Exception:
                log.exception("progress update failed")

        self.spawn(guarded())

    async def settle(self, timeout_s: float) -> None:
        """Wait (without cancelling) until every task spawned so far, and any they spawn, has ended."""
        async with asyncio.timeout(timeout_s):
            while pending := [task for task in self.tasks if not task.done()]:
                await asyncio.wait(pending)

    async def drain(self, grace_s: float) -> None:
        """Let running tasks finish for up to `grace_s` seconds, then cancel the rest."""
        pending = [task for task in self.tasks if not task.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace_s)
            for task in still:
                task.cancel()
