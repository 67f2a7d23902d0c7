"""The scheduler when the queue lives in a shared store (PostgreSQL): jobs are claimed, not held.

Any process can take any job: the dispatch loop claims the next one in the store's fair order
(bot/storage/shared_queue.py) when the shared upstream budget grants a permit, and runs it here.
What stays in memory is this process's running set and a *mirror* of the queue, read back from
the store every `refresh_s`, for positions, ETAs and the admission estimates (15-minute window,
queue room): the same order in every process, at most `refresh_s` old.

Leases: every `lease_s / 3` this process renews the leases of the jobs it holds, and puts back
at the head of their queues the jobs of processes whose leases ran out (`on_reclaimed` is told
about the ones it must finish itself: an image generated and not delivered, a job interrupted
twice). A graceful stop hands the jobs it took but never sent back at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bot.clock import wait_event
from bot.fair_queue import FairQueue, QueueItem
from bot.scheduler import Reservation, Scheduler
from bot.storage.shared_queue import Reclaimed, SharedQueue

log = logging.getLogger("imagine.scheduler")


class SharedScheduler(Scheduler):
    def __init__(
        self,
        *args: Any,
        shared: SharedQueue,
        on_reclaimed: Callable[[Reclaimed], Awaitable[None]],
        refresh_s: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.shared = shared
        self._on_reclaimed = on_reclaimed
        self._refresh_s = refresh_s
        self._loops: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[Any]] = set()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        if not self._loops and not self._stopping:
            loop = asyncio.get_running_loop()
            self._loops = [
                loop.create_task(self._every(self._refresh_s, self.refresh), name="queue-mirror"),
                loop.create_task(self._every(self.shared.lease_s / 3, self.keep_leases), name="queue-leases"),
            ]

    async def stop(self, grace_s: float) -> list[QueueItem]:
        waiting = await super().stop(grace_s)
        await self._stop_loops()
        handed = await self.shared.hand_back()  # unsent jobs: others may take them now
        if handed:
            log.info("handed %d job(s) back to the shared queue", handed)
        return waiting

    def force(self) -> None:
        super().force()
        for task in self._loops:
            task.cancel()

    async def _stop_loops(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, *self._spawned, return_exceptions=True)
        self._loops = []

    # -- the service's way in -------------------------------------------------------------------
    async def admit(self, reservation: Reservation, job_id: int) -> None:
        self.cancel(reservation)
        await self.shared.push(job_id, reservation.guild_key, reservation.user_key)
        await self.refresh()

    async def requeue(self, item: QueueItem) -> None:
        await self.shared.push(item.job_id, item.guild_key, item.user_key)
        await self.refresh()

    async def hold(self, job_id: int) -> None:
        await self.shared.take(job_id)

    async def reclaim(self) -> None:
        """Take back the jobs of dead processes now (at start, then every lease_s / 3)."""
        for reclaimed in await self.shared.reclaim_expired():
            log.warning(
                "job %s: its process stopped renewing its lease (%s); %s",
                reclaimed.job_id,
                reclaimed.state,
                "finishing it here" if reclaimed.state == "generated" or reclaimed.attempts >= 2 else "queued again",
            )
            try:
                await self._on_reclaimed(reclaimed)
            except Exception:
                log.exception("job %s: could not take it over", reclaimed.job_id)
        await self.refresh()

    # -- the queue lives in the store -----------------------------------------------------------
    async def refresh(self) -> None:
        """Read the queue back from the store; tell observers when the order changed."""
        mirror = await self.shared.snapshot()
        changed = [i.job_id for i in mirror.order()] != [i.job_id for i in self._queue.order()]
        self._queue = mirror
        if mirror:
            self._wakeup.set()
        if changed:
            self._changed()

    async def keep_leases(self) -> None:
        await self.shared.renew()
        await self.reclaim()

    async def _work_waiting(self) -> None:
        while not self._queue:
            self._wakeup.clear()
            await wait_event(self._wakeup, self._refresh_s, self._clock)
            if not self._queue:
                await self.refresh()

    async def _take_next(self) -> QueueItem | None:
        item = await self.shared.claim()
        if item is None:
            self._queue = FairQueue()  # stale: another process took them; the mirror catches up
            await self.refresh()
        else:
            self._queue.discard(item.job_id)
        return item

    def _give_turn_back(self, item: QueueItem) -> None:
        self._spawn(self._requeue_front(item))

    async def _requeue_front(self, item: QueueItem) -> None:
        await self.shared.requeue_front(item.job_id)
        await self.refresh()

    # -- helpers --------------------------------------------------------------------------------
    async def _every(self, period_s: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await self._clock.sleep(period_s)
            try:
                await step()
            except Exception:  # the store may be briefly unreachable: log, and try again next time
                log.exception("shared queue upkeep failed (%s)", getattr(step, "__name__", step))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
