"""The scheduler on a fake clock: dispatch, requeue on 429, limits, admission, ETAs, shutdown.

The fair order itself (turns of guilds and users, positions) is tested in ``test_fair_queue.py``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

import pytest

from bot.imaging.errors import RateLimited
from bot.limiter import Gate, Permit, UpstreamLimiter
from bot.scheduler import QueueItem, QueuePosition, QueueRefusal, Scheduler
from tests.clocks import FakeClock


class Harness:
    """A scheduler whose runner holds its permit for ``hold`` fake seconds per job."""

    def __init__(
        self,
        concurrency: int = 1,
        rpm: int = 6000,
        hold: float = 1.0,
        limiter_cls: type[UpstreamLimiter] = UpstreamLimiter,
        **limiter_kw,
    ) -> None:
        self.clock = FakeClock()
        self.limiter = limiter_cls(concurrency, rpm, self.clock, **limiter_kw)
        self.hold = hold
        self.started: list[QueueItem] = []
        self.finished: list[int] = []
        self.cancelled: list[int] = []
        self.in_flight = self.max_in_flight = 0
        self.changes = 0
        #: per job id, replaces the default body of one run (popped, so it applies once)
        self.once: dict[int, Callable[[], Awaitable[None]]] = {}
        self.scheduler = Scheduler(self.limiter, self.run, clock=self.clock, on_change=self.changed)
        self._ids = iter(range(1, 10**6))

    def changed(self) -> None:
        self.changes += 1

    async def run(self, item: QueueItem, gate: Gate) -> None:
        self.started.append(item)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            async with gate.attempt() as permit:
                permit.sent()  # the request leaves at once
                body = self.once.pop(item.job_id, None)
                await (body() if body else self.clock.sleep(self.hold))
            self.finished.append(item.job_id)
        except asyncio.CancelledError:
            self.cancelled.append(item.job_id)
            raise
        finally:
            self.in_flight -= 1

    def add(self, guild: str, user: str, front: bool = False) -> QueueItem:
        item = QueueItem(next(self._ids), guild, user, self.clock.now())
        self.scheduler.enqueue(item, front=front)
        return item

    def order(self) -> list[int]:
        return [i.job_id for i in self.started]

    async def run_all(self, n: int) -> None:
        await self.clock.run_until(lambda: len(self.finished) >= n)


async def test_dispatch_follows_the_fair_order_late_bound():
    h = Harness()
    h.scheduler.start()
    for u in range(10):
        h.add("A", f"a{u}")
    await h.clock.settle()  # the dispatcher already took A's first job
    b = h.add("B", "b")
    await h.run_all(11)
    assert h.order().index(b.job_id) <= 2  # 2nd or, at worst, 3rd


async def test_rate_limited_job_goes_back_to_the_head_and_is_not_counted():
    h = Harness()
    first, later = h.add("A", "a1"), h.add("A", "a1")
    other_user, other_guild = h.add("A", "a2"), h.add("B", "b")

    async def refused() -> None:
        raise RateLimited("429", retry_after=30.0)

    h.once[first.job_id] = refused
    h.scheduler.start()
    await h.run_all(4)
    assert h.order() == [first.job_id, first.job_id, other_guild.job_id, other_user.job_id, later.job_id]
    assert h.started[1] is first  # the same item, requeued as it was
    assert h.limiter.starts_in_last_minute() == 5


async def test_rate_limited_retry_waits_for_the_pause():
    h = Harness()
    job = h.add("A", "a")
    starts: list[float] = []

    async def refused() -> None:
        starts.append(h.clock.now())
        raise RateLimited("429", retry_after=30.0)

    h.once[job.job_id] = refused
    h.scheduler.start()
    await h.run_all(1)
    assert len(h.started) == 2
    assert h.limiter.starts_in_last_minute() == 2
    assert h.clock.now() - starts[0] >= 30.0 + h.hold


async def test_rate_limited_outside_the_gate_still_pauses():
    h = Harness()

    async def runner(item: QueueItem, gate: Gate) -> None:
        h.started.append(item)
        if len(h.started) == 1:
            raise RateLimited("429 seen by a retry loop that gave up")

    h.scheduler = Scheduler(h.limiter, runner, clock=h.clock)
    job = h.add("A", "a")
    h.scheduler.start()
    await h.clock.settle()
    assert h.limiter.pause_remaining() == pytest.approx(h.limiter.default_pause_s)
    await h.clock.run_until(lambda: len(h.started) == 2)
    assert h.started == [job, job]


async def test_runner_errors_are_logged_and_dropped(caplog):
    h = Harness()
    bad, good = h.add("A", "a"), h.add("A", "a")

    async def boom() -> None:
        raise ValueError("bug")

    h.once[bad.job_id] = boom
    h.scheduler.start()
    with caplog.at_level(logging.ERROR, logger="imagine.scheduler"):
        await h.run_all(1)
    assert h.order() == [bad.job_id, good.job_id]
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)
    assert h.scheduler.pending_count("A", "a") == 0


def admit(h: Harness, guild: str, user: str, **kw):
    limits = {"guild_queue_max": 100, "user_pending_max": 100, "deadline_s": None} | kw
    return h.scheduler.reserve(guild, user, **limits)


async def test_refuses_a_full_guild_queue_counting_reservations():
    h = Harness()
    first = admit(h, "A", "u1", guild_queue_max=2)
    admit(h, "A", "u2", guild_queue_max=2)
    with pytest.raises(QueueRefusal) as refused:
        admit(h, "A", "u3", guild_queue_max=2)
    assert refused.value.reason == "guild_queue_full" and refused.value.retry_after_s > 0
    admit(h, "B", "u3", guild_queue_max=2)  # other guilds are not affected
    h.scheduler.cancel(first)
    h.scheduler.cancel(first)  # idempotent
    third = admit(h, "A", "u3", guild_queue_max=2)
    h.scheduler.activate(third, job_id=42)
    assert h.scheduler.waiting_count("A") == 1
    with pytest.raises(QueueRefusal, match="guild_queue_full"):
        admit(h, "A", "u4", guild_queue_max=2)
    with pytest.raises(ValueError):
        h.scheduler.activate(third, job_id=43)


async def test_refuses_a_user_with_too_many_pending_jobs():
    h = Harness()
    reservation = admit(h, "A", "u", user_pending_max=1)
    with pytest.raises(QueueRefusal) as refused:
        admit(h, "A", "u", user_pending_max=1)
    assert refused.value.reason == "user_pending"
    h.scheduler.activate(reservation, job_id=1)
    with pytest.raises(QueueRefusal, match="user_pending"):  # waiting counts
        admit(h, "A", "u", user_pending_max=1)
    h.scheduler.start()
    await h.clock.settle()
    assert h.scheduler.running("A")[0].job_id == 1
    with pytest.raises(QueueRefusal, match="user_pending"):  # running counts
        admit(h, "A", "u", user_pending_max=1)
    await h.run_all(1)
    assert h.scheduler.pending_count("A", "u") == 0
    admit(h, "A", "u", user_pending_max=1)


async def test_refuses_a_job_that_would_finish_too_late_using_the_real_order():
    h = Harness(concurrency=1, rpm=60, expected_hold_s=10.0)
    for u in range(5):
        h.add("A", f"a{u}")
    # Behind five jobs, a new job in guild A would finish in about 6 × 10 s...
    with pytest.raises(QueueRefusal) as refused:
        admit(h, "A", "late", deadline_s=30.0)
    assert refused.value.reason == "too_long_wait"
    assert refused.value.retry_after_s == pytest.approx(60.0 - 30.0)
    # ...but guild B's first job goes second (guilds take turns): done in about 20 s.
    admit(h, "B", "b", deadline_s=30.0)


async def test_positions_follow_the_dispatch_order_and_update():
    h = Harness(concurrency=1, expected_hold_s=10.0)
    a1, a2, a3 = (h.add("A", "u1") for _ in range(3))
    a4 = h.add("A", "u2")
    b = h.add("B", "b")
    order = [a1, b, a4, a2, a3]
    assert h.scheduler.waiting() == order
    assert h.scheduler.waiting("A") == [a1, a4, a2, a3]
    assert h.scheduler.position(a2.job_id) == QueuePosition(3, 4, pytest.approx(30.0))
    assert {j: p.global_position for j, p in h.scheduler.positions().items()} == {
        i.job_id: n for n, i in enumerate(order, 1)
    }
    h.scheduler.start()
    await h.clock.settle()
    assert h.scheduler.running("A") == [a1]
    assert h.scheduler.position(a1.job_id) is None
    assert h.scheduler.position(b.job_id).global_position == 1
    # a1 holds the only slot for about 10 s more, then b and a4 go first: 30 s.
    assert h.scheduler.position(a2.job_id) == QueuePosition(2, 3, pytest.approx(30.0))


async def test_on_change_is_called_and_observer_errors_are_contained(caplog):
    h = Harness()
    h.add("A", "a")
    assert h.changes == 1
    h.scheduler.start()
    await h.run_all(1)
    assert h.changes == 2  # enqueue + dispatch

    def broken() -> None:
        raise RuntimeError("observer bug")

    h.scheduler._on_change = broken
    with caplog.at_level(logging.ERROR, logger="imagine.scheduler"):
        h.add("A", "a")
        await h.run_all(2)
    assert "observer" in caplog.text


async def test_stop_lets_sent_requests_finish_gives_deliveries_the_grace_and_cancels_unsent_at_once():
    """Pay once: a request with the provider runs to completion whatever the grace (cancelled, it
    would be generated and billed again after the restart); a delivery gets the grace (and more
    while the bot waits anyway); a job whose request has not left is cancelled at once (it goes
    back to the queue)."""
    h = Harness(concurrency=3)
    events: list[tuple[str, float]] = []

    async def runner(item: QueueItem, gate: Gate) -> None:
        try:
            if item.job_id == sent.job_id:
                async with gate.attempt() as permit:
                    permit.sent()
                    await h.clock.sleep(100.0)  # a slow generation
            elif item.job_id == delivering.job_id:
                gate.close()  # a cache hit: nothing to send, only the upload
                await h.clock.sleep(100.0)
            else:
                await h.clock.sleep(100.0)  # still preparing its request
            events.append(("finished", h.clock.now() - t0))
        except asyncio.CancelledError:
            events.append((f"cancelled {item.job_id}", h.clock.now() - t0))
            raise

    h.scheduler = Scheduler(h.limiter, runner, clock=h.clock)
    sent, delivering, unsent = h.add("A", "a"), h.add("B", "b"), h.add("C", "c")
    also_unsent = h.add("D", "d")  # dispatched as soon as the delivering job gave its permit back
    rest = [h.add("E", "e")]
    t0 = h.clock.now()
    h.scheduler.start()
    await h.clock.settle()
    stopping = asyncio.create_task(h.scheduler.stop(grace_s=10.0))
    await h.clock.run_until(stopping.done)
    assert sorted(events[:2]) == [(f"cancelled {unsent.job_id}", 0.0), (f"cancelled {also_unsent.job_id}", 0.0)]
    # the delivery keeps going while the bot waits for the request in flight anyway; then the grace is over
    assert events[2:] == [("finished", 100.0), (f"cancelled {delivering.job_id}", 100.0)]
    assert stopping.result() == rest
    assert h.limiter.in_flight == 0


async def test_force_cancels_even_a_request_in_flight():
    h = Harness(hold=1000.0)
    h.add("A", "a")
    h.scheduler.start()
    await h.clock.settle()
    stopping = asyncio.create_task(h.scheduler.stop(grace_s=1.0))
    await h.clock.advance(50.0)
    assert not stopping.done()  # its request is with the provider
    h.scheduler.force()
    await h.clock.run_until(stopping.done)
    assert h.cancelled == [1] and h.limiter.in_flight == 0


async def test_stop_returns_as_soon_as_running_jobs_end():
    h = Harness(hold=3.0)
    h.add("A", "a")
    h.scheduler.start()
    await h.clock.settle()
    t0 = h.clock.now()
    stopping = asyncio.create_task(h.scheduler.stop(grace_s=60.0))
    await h.clock.run_until(stopping.done)
    assert h.clock.now() - t0 == pytest.approx(3.0)
    assert stopping.result() == [] and h.cancelled == []


async def test_concurrency_is_respected_with_slow_jobs():
    h = Harness(concurrency=3, hold=20.0)
    for n in range(10):
        h.add(f"g{n % 4}", f"u{n}")
    h.scheduler.start()
    await h.run_all(10)
    assert h.max_in_flight == 3


async def test_removed_job_does_not_spend_a_window_slot():
    h = Harness()
    running, removed = h.add("A", "a"), h.add("A", "a")
    h.scheduler.start()
    await h.clock.settle()  # the dispatcher now waits for a permit on behalf of `removed`
    assert h.scheduler.remove(removed.job_id) == removed
    assert h.scheduler.remove(removed.job_id) is None
    await h.run_all(1)
    await h.clock.settle()
    assert h.order() == [running.job_id]
    assert h.limiter.starts_in_last_minute() == 1 and h.limiter.in_flight == 0


# -- the dispatch loop must never die silently ---------------------------------------------------


class FlakyLimiter(UpstreamLimiter):
    """``acquire`` fails (a bug, not a limit) on its first ``failures`` calls; ``math.inf``: always."""

    failures: float = 0
    error: type[BaseException] = RuntimeError

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failed_at: list[float] = []

    async def acquire(self) -> Permit:
        if len(self.failed_at) < self.failures:
            self.failed_at.append(self.clock.now())
            raise self.error(f"limiter bug #{len(self.failed_at)}")
        return await super().acquire()


def loop_failures(caplog: pytest.LogCaptureFixture) -> list[type[BaseException]]:
    """The exception types of the dispatch-loop failures logged (with traceback) at ERROR."""
    return [
        r.exc_info[0]
        for r in caplog.records
        if r.name == "imagine.scheduler" and r.levelno == logging.ERROR and r.exc_info and "dispatch" in r.message
    ]


async def test_dispatch_loop_restarts_after_an_unexpected_error(caplog):
    h = Harness(limiter_cls=FlakyLimiter)
    h.limiter.failures = 1
    job = h.add("A", "a")
    with caplog.at_level(logging.INFO, logger="imagine.scheduler"):
        h.scheduler.start()
        await h.clock.advance(10.0)  # far more than the first restart delay
    assert (h.order(), loop_failures(caplog)) == ([job.job_id], [RuntimeError])
    assert h.scheduler.healthy and isinstance(h.scheduler.last_error, RuntimeError)
    await h.run_all(1)


async def test_a_job_popped_when_the_loop_failed_keeps_its_turn_and_the_permit_is_released(caplog):
    h = Harness()
    calls = 0

    def runner(item: QueueItem, gate: Gate) -> Awaitable[None]:
        nonlocal calls
        calls += 1
        if calls == 1:  # fails after the permit was granted and the job taken from the queue
            raise RuntimeError("runner bug")
        return h.run(item, gate)

    h.scheduler = Scheduler(h.limiter, runner, clock=h.clock)
    a1, a2, b = h.add("A", "a1"), h.add("A", "a2"), h.add("B", "b")
    with caplog.at_level(logging.ERROR, logger="imagine.scheduler"):
        h.scheduler.start()
        await h.clock.settle()
        assert (h.scheduler.waiting(), h.limiter.in_flight) == ([a1, b, a2], 0)
        assert h.limiter.starts_in_last_minute() == 0  # released unused: no window slot spent
        await h.run_all(3)
    assert h.order() == [a1.job_id, b.job_id, a2.job_id]
    assert loop_failures(caplog) == [RuntimeError]
    assert h.limiter.starts_in_last_minute() == 3


async def test_a_loop_that_keeps_failing_makes_the_scheduler_unhealthy_and_keeps_retrying(caplog):
    h = Harness(limiter_cls=FlakyLimiter)
    h.limiter.failures = math.inf
    h.scheduler = Scheduler(
        h.limiter, h.run, clock=h.clock, restart_delay_s=0.1, max_restart_delay_s=2.0, unhealthy_after=3
    )
    job = h.add("A", "a")
    with caplog.at_level(logging.INFO, logger="imagine.scheduler"):
        h.scheduler.start()
        await h.clock.settle()
        assert h.scheduler.healthy  # one failure is not yet a verdict
        await h.clock.advance(20.0)
    failed_at = h.limiter.failed_at
    gaps = [round(b - a, 6) for a, b in zip(failed_at, failed_at[1:], strict=False)]
    assert gaps[:6] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0] and set(gaps[5:]) == {2.0}  # doubling, bounded
    assert loop_failures(caplog) == [RuntimeError] * len(failed_at)  # every failure logged
    assert not h.scheduler.healthy and str(h.scheduler.last_error) == f"limiter bug #{len(failed_at)}"
    assert [r.levelno for r in caplog.records if "unhealthy" in r.message] == [logging.CRITICAL]  # once
    # stop() still returns at once, from the middle of a restart delay
    t0 = h.clock.now()
    stopping = asyncio.create_task(h.scheduler.stop(grace_s=30.0))
    await h.clock.settle()
    assert stopping.done() and stopping.result() == [job] and h.clock.now() == t0
    assert h.order() == []


async def test_a_successful_dispatch_makes_the_scheduler_healthy_again(caplog):
    h = Harness(limiter_cls=FlakyLimiter)
    h.limiter.failures = 4
    h.scheduler = Scheduler(h.limiter, h.run, clock=h.clock, unhealthy_after=3)
    h.add("A", "a")
    with caplog.at_level(logging.INFO, logger="imagine.scheduler"):
        h.scheduler.start()
        await h.clock.run_until(lambda: not h.scheduler.healthy)
        assert len(h.limiter.failed_at) == 3 and h.order() == []
        await h.clock.run_until(lambda: len(h.started) == 1)
    assert h.scheduler.healthy and len(h.limiter.failed_at) == 4
    assert "recovered" in caplog.text
    # the count starts again from zero: three more failures to become unhealthy again
    h.limiter.failures, h.limiter.failed_at = 2, []
    h.add("A", "a")
    await h.run_all(2)
    assert h.scheduler.healthy


async def test_a_stray_cancelled_error_is_a_failure_but_stop_is_not(caplog):
    h = Harness(limiter_cls=FlakyLimiter)
    h.limiter.failures, h.limiter.error = 1, asyncio.CancelledError  # nobody asked the loop to stop
    job = h.add("A", "a")
    with caplog.at_level(logging.ERROR, logger="imagine.scheduler"):
        h.scheduler.start()
        await h.run_all(1)
        assert h.order() == [job.job_id]
        assert loop_failures(caplog) == [asyncio.CancelledError]
        await h.scheduler.stop(grace_s=1.0)  # waiting for work: stops without a failure
    assert loop_failures(caplog) == [asyncio.CancelledError]
