"""Fair dispatch of image jobs onto the shared upstream.

The upstream is slow, paid and rate-limited account-wide, so the queue in front of it must be
fair: guilds take turns, and inside a guild users take turns. That order is ``FairQueue``'s
(``bot.fair_queue``, pure and synchronous); this module owns admission, the dispatch loop, the
running set and the ETAs.

The dispatch loop acquires a limiter permit *before* choosing the job, so the choice is made
at the moment the upstream can take it (late binding: positions stay accurate, and a job
cancelled meanwhile costs nothing). A job refused with ``RateLimited`` goes back to the head
of its user's queue and its user and guild become next in turn: the refusal was the
upstream's doing, not the job's turn.

Admission (``reserve``) is synchronous: no await between the checks and the reservation, so
two interactions arriving together cannot both take the last slot.

The dispatch loop runs under a supervisor: if it ever raises (a bug in the limiter, the runner
factory, ...), the failure is logged with its traceback, a job it had taken goes back to the
head of the queue, an unused permit is given back, and the loop restarts after a short backoff
(doubling, bounded). After ``unhealthy_after`` failures in a row without a dispatch in between,
``healthy`` turns False (and a CRITICAL line says so) while the restarts go on; the next
successful dispatch makes it True again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from bot.clock import Clock, wait_event
from bot.fair_queue import FairQueue, QueueItem
from bot.imaging.errors import RateLimited
from bot.limiter import Gate, Permit, UpstreamLimiter

__all__ = ["QueueItem", "QueuePosition", "QueueRefusal", "Reservation", "Runner", "Scheduler"]

log = logging.getLogger("imagine.scheduler")


@dataclass(frozen=True, slots=True)
class QueuePosition:
    guild_position: int  # 1-based among the guild's waiting jobs, in real dispatch order
    global_position: int  # 1-based in the global dispatch order
    eta_s: float  # estimated seconds until the job is dispatched


@dataclass(frozen=True, eq=False)
class Reservation:
    """A slot held between admission and the durable write of the job (identity-compared)."""

    guild_key: str
    user_key: str
    created_at: float


RefusalReason = Literal["guild_queue_full", "user_pending", "too_long_wait"]


class QueueRefusal(Exception):
    def __init__(self, reason: RefusalReason, retry_after_s: float) -> None:
        super().__init__(f"{reason} (retry in about {retry_after_s:.0f} s)")
        self.reason = reason
        self.retry_after_s = max(0.0, retry_after_s)


@dataclass
class _Running:
    item: QueueItem
    gate: Gate
    task: asyncio.Task[None]
    started_at: float


def _owner(item: QueueItem | Reservation) -> tuple[str, str]:
    return item.guild_key, item.user_key


Runner = Callable[[QueueItem, Gate], Awaitable[None]]


class Scheduler:
    def __init__(
        self,
        limiter: UpstreamLimiter,
        runner: Runner,
        *,
        clock: Clock | None = None,
        on_change: Callable[[], None] | None = None,
        restart_delay_s: float = 0.1,
        max_restart_delay_s: float = 5.0,
        unhealthy_after: int = 5,
    ) -> None:
        self._limiter = limiter
        self._runner = runner
        self._clock = clock or limiter.clock
        self._on_change = on_change
        self._queue = FairQueue()  # the waiting jobs
        self._running: dict[int, _Running] = {}
        self._reservations: set[Reservation] = set()  # few, short-lived: counted by scanning
        self._wakeup = asyncio.Event()
        self._running_changed = asyncio.Event()  # a running job ended (or stop was forced)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._forced = False
        self._restart_delay_s = restart_delay_s
        self._max_restart_delay_s = max_restart_delay_s
        self._unhealthy_after = max(1, unhealthy_after)
        self._failures = 0  # dispatch-loop failures since the last successful dispatch
        self._last_error: BaseException | None = None

    # -- admission -------------------------------------------------------------------------

    def reserve(
        self,
        guild_key: str,
        user_key: str,
        *,
        guild_queue_max: int,
        user_pending_max: int,
        deadline_s: float | None,
    ) -> Reservation:
        """Check every limit and hold a slot, atomically (no await); raise ``QueueRefusal``."""
        reserved = sum(1 for r in self._reservations if r.guild_key == guild_key)
        if self.waiting_count(guild_key) + reserved >= guild_queue_max:
            head = self.waiting(guild_key)[:1]
            wait = self._eta(head[0].job_id) if head else self._seconds_per_start()
            raise QueueRefusal("guild_queue_full", wait)
        if self.pending_count(guild_key, user_key) >= user_pending_max:
            raise QueueRefusal("user_pending", self._user_retry_after(guild_key, user_key))
        hold = self._limiter.avg_hold_s
        # Behind every waiting job is the latest a new job can stand: when even that finishes in
        # time (the usual case), the exact place (which orders the whole queue) is not needed.
        if deadline_s is not None and self.estimate_wait(len(self._queue) + 1) + hold > deadline_s:
            finish = self.estimate_wait(self._queue.prospective_position(guild_key, user_key)) + hold
            if finish > deadline_s:
                raise QueueRefusal("too_long_wait", finish - deadline_s)
        reservation = Reservation(guild_key, user_key, self._clock.now())
        self._reservations.add(reservation)
        return reservation

    def activate(self, reservation: Reservation, job_id: int) -> QueueItem:
        """Turn a reservation into a waiting job (after the job was written durably)."""
        if reservation not in self._reservations:
            raise ValueError("reservation is not active (cancelled or already activated)")
        self.cancel(reservation)
        item = QueueItem(job_id, reservation.guild_key, reservation.user_key, self._clock.now())
        self.enqueue(item)
        return item

    def cancel(self, reservation: Reservation) -> None:
        self._reservations.discard(reservation)

    # The service's way in (async: in a shared queue they are writes to the store).
    async def admit(self, reservation: Reservation, job_id: int) -> None:
        """An admitted, acknowledged job joins the queue."""
        self.activate(reservation, job_id)

    async def requeue(self, item: QueueItem) -> None:
        """A job joins the queue without admission (it was admitted before: a follower whose
        leader landed, a job resumed after a restart)."""
        self.enqueue(item)

    async def hold(self, job_id: int) -> None:
        """A job this process works on outside the queue (a cache hit, a follower): nothing to
        do here; a shared queue leases it, so that another process finishes it if this one dies."""

    def enqueue(self, item: QueueItem, front: bool = False) -> None:
        """Add a job without admission checks (also used to restore jobs after a restart).

        ``front=True`` puts it at the head of its user's queue and makes that user and guild
        next in turn.
        """
        if item.job_id in self._queue or item.job_id in self._running:
            raise ValueError(f"job {item.job_id} is already queued or running")
        self._push(item, front)
        self._changed()

    def remove(self, job_id: int) -> QueueItem | None:
        """Take a waiting job out of the queue (e.g. the user cancelled it)."""
        item = self._queue.discard(job_id)
        if item is not None:
            self._changed()
        return item

    # -- queries ---------------------------------------------------------------------------

    def waiting(self, guild_key: str | None = None) -> list[QueueItem]:
        """Waiting jobs in the order they will be dispatched (of one guild, or all)."""
        return self._queue.order(guild_key)

    def running(self, guild_key: str) -> list[QueueItem]:
        return [r.item for r in self._running.values() if r.item.guild_key == guild_key]

    def waiting_count(self, guild_key: str) -> int:
        """Jobs waiting in the guild's queue (reservations not included)."""
        return self._queue.count(guild_key)

    def pending_count(self, guild_key: str, user_key: str) -> int:
        """The user's jobs in this guild: waiting + running + reserved."""
        waiting = self._queue.count(guild_key, user_key)
        running = sum(1 for r in self._running.values() if _owner(r.item) == (guild_key, user_key))
        reserved = sum(1 for r in self._reservations if _owner(r) == (guild_key, user_key))
        return waiting + running + reserved

    def position(self, job_id: int) -> QueuePosition | None:
        place = self._queue.place(job_id)
        if place is None:
            return None
        return QueuePosition(place.guild_position, place.global_position, self.estimate_wait(place.global_position))

    def positions(self) -> dict[int, QueuePosition]:
        """Every waiting job's position at once (one pass, for broadcasting updates)."""
        base = self._limiter.delay_until_ready()
        step = self._seconds_per_start()
        return {j: QueuePosition(g, p, base + (p - 1) * step) for j, (g, p) in self._queue.places().items()}

    def wait_for_new_job(self, guild_key: str, user_key: str) -> float:
        """Seconds until a job this user submitted now would be dispatched (for /queue)."""
        return self.estimate_wait(self._queue.prospective_position(guild_key, user_key))

    def estimate_wait(self, global_position: int) -> float:
        """Seconds until the job at this position is dispatched, from the limiter's throughput."""
        return self._limiter.delay_until_ready() + max(0, global_position - 1) * self._seconds_per_start()

    @property
    def healthy(self) -> bool:
        """False while the dispatch loop keeps failing (``unhealthy_after`` times in a row)."""
        return self._failures < self._unhealthy_after

    @property
    def dispatching(self) -> bool:
        """Whether the dispatch loop is there to start jobs: started, not stopped, not ended."""
        return self._task is not None and not self._task.done() and not self._stopping

    @property
    def running_count(self) -> int:
        """Jobs this process is running now."""
        return len(self._running)

    @property
    def last_error(self) -> BaseException | None:
        """The dispatch loop's most recent failure, if any (kept after recovery, for diagnosis)."""
        return self._last_error

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None and not self._stopping:
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name="dispatch")

    async def stop(self, grace_s: float) -> list[QueueItem]:
        """Stop dispatching, and end the running jobs without paying twice.

        A job whose request has not left yet is cancelled at once (its runner puts it back in
        the queue, uncounted). One whose request is with the provider runs to completion,
        whatever the grace: cancelled, it would be generated, and billed, again after the
        restart. Only ``force()`` (a second signal) cancels those. One with nothing more to send
        (delivering a result) gets ``grace_s``, or until the requests in flight are done if
        that is later. Returns the jobs still waiting, in
        dispatch order (they remain durable elsewhere).
        """
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._cancel([r for r in self._running.values() if not r.gate.sent and not r.gate.closed], "not yet sent")
        deadline = self._clock.now() + grace_s
        while self._running and not self._forced:
            sending = [r for r in self._running.values() if r.gate.sent]
            left = deadline - self._clock.now()
            if not sending and left <= 0:
                break
            if sending:
                log.info("stopping: waiting for %d request(s) already sent upstream", len(sending))
            self._running_changed.clear()
            await wait_event(self._running_changed, None if sending else left, self._clock)
        await self._cancel_and_wait(list(self._running.values()), "at shutdown")
        return self.waiting()

    def force(self) -> None:
        """Cancel every running job now, requests in flight included (a second signal)."""
        self._forced = True
        self._stopping = True
        self._cancel(list(self._running.values()), "forced: requests in flight may be generated again")
        self._running_changed.set()

    def _cancel(self, runs: list[_Running], why: str) -> None:
        for run in runs:
            run.task.cancel()
        if runs:
            log.warning("cancelled running job(s) %s (%s)", ", ".join(str(r.item.job_id) for r in runs), why)

    async def _cancel_and_wait(self, runs: list[_Running], why: str) -> None:
        self._cancel(runs, why)
        if runs:
            await asyncio.gather(*(r.task for r in runs), return_exceptions=True)

    # -- internals -------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Run the dispatch loop for good: log each failure, restart it after a bounded backoff."""
        while True:
            try:
                await self._dispatch_loop()
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if self._stopping or (task is not None and task.cancelling()):
                    raise  # stop(): not a failure
                delay = self._loop_failed(exc)  # a stray CancelledError nobody asked for
            except Exception as exc:
                delay = self._loop_failed(exc)
            await self._clock.sleep(delay)

    def _loop_failed(self, exc: BaseException) -> float:
        """Count and log a failure of the dispatch loop; return the delay before the restart."""
        self._failures += 1
        self._last_error = exc
        delay = min(self._restart_delay_s * 2 ** min(self._failures - 1, 30), self._max_restart_delay_s)
        log.error("dispatch loop failed (%d in a row); restarting it in %.1f s", self._failures, delay, exc_info=exc)
        if self._failures == self._unhealthy_after:
            log.critical(
                "scheduler unhealthy: the dispatch loop failed %d times in a row without dispatching a job;"
                " no job will start until it recovers (still retrying)",
                self._failures,
            )
        return delay

    def _dispatched(self) -> None:
        if self._failures:
            level = logging.INFO if self.healthy else logging.WARNING
            log.log(level, "dispatch loop recovered after %d failure(s)", self._failures)
            self._failures = 0

    async def _dispatch_loop(self) -> None:
        while True:
            await self._work_waiting()
            permit = await self._limiter.acquire()
            item: QueueItem | None = None
            try:
                item = await self._take_next()
                if item is None:  # the job was removed (or taken elsewhere) while we waited for the upstream
                    permit.release()
                    continue
                self._launch(item, permit)
            except BaseException:
                # Not launched: give the permit back unused, and the job keeps its turn.
                permit.release()
                if item is not None and item.job_id not in self._queue and item.job_id not in self._running:
                    self._give_turn_back(item)
                raise
            self._dispatched()
            self._changed()

    # -- where the queue lives: here, in memory (a shared queue overrides these) ----------------
    async def _work_waiting(self) -> None:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _take_next(self) -> QueueItem | None:
        return self._queue.pop()

    def _give_turn_back(self, item: QueueItem) -> None:
        """The job did not get to run (a 429, a failed launch): back to the head, its turn kept."""
        self._push(item, front=True)

    def _launch(self, item: QueueItem, permit: Permit) -> None:
        """Start the job's task; whatever can fail happens before the task exists."""
        started_at = self._clock.now()
        gate = self._limiter.gate(first_permit=permit)
        run = self._runner(item, gate)
        try:
            task = asyncio.get_running_loop().create_task(run, name=f"job-{item.job_id}")
        except BaseException:
            if asyncio.iscoroutine(run):
                run.close()
            raise
        self._running[item.job_id] = _Running(item, gate, task, started_at)
        # A done-callback (not a wrapper coroutine) also runs for a task cancelled before it started.
        task.add_done_callback(lambda t: self._finished(item.job_id, t))

    def _finished(self, job_id: int, task: asyncio.Task[None]) -> None:
        run = self._running.pop(job_id)
        run.gate.close()
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, RateLimited):
            if not run.gate.rate_limited:  # it did not pass through the gate: pause here
                self._limiter.pause_for(exc)
            log.info("job %d rate-limited; back to the head of the queue", job_id)
            self._give_turn_back(run.item)
            self._changed()
        elif exc is not None:
            log.error("job %d failed", job_id, exc_info=exc)
        self._running_changed.set()

    def _push(self, item: QueueItem, front: bool) -> None:
        self._queue.push(item, front=front)
        self._wakeup.set()

    def _changed(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                log.exception("on_change observer failed")

    def _seconds_per_start(self) -> float:
        lim = self._limiter
        return max(60.0 / lim.rpm, lim.avg_hold_s / lim.concurrency)

    def _eta(self, job_id: int) -> float:
        pos = self.position(job_id)
        return pos.eta_s if pos else 0.0

    def _user_retry_after(self, guild_key: str, user_key: str) -> float:
        """When the user's first pending job should be done, i.e. a slot frees."""
        now, hold = self._clock.now(), self._limiter.avg_hold_s
        guesses = [
            max(0.0, r.started_at + hold - now)
            for r in self._running.values()
            if _owner(r.item) == (guild_key, user_key)
        ]
        mine = [i for i in self.waiting(guild_key) if i.user_key == user_key]
        if mine:
            guesses.append(self._eta(mine[0].job_id) + hold)
        return min(guesses, default=hold)
