"""UpstreamLimiter and Gate: every limit checked on a fake clock (no real sleeps)."""

from __future__ import annotations

import asyncio

import pytest

from bot.clock import wait_event
from bot.imaging.errors import RateLimited, ServerError
from bot.limiter import Permit, UpstreamLimiter
from tests.clocks import FakeClock

MARGIN = 0.05


def make(concurrency: int = 10, rpm: int = 6000, **kw) -> tuple[FakeClock, UpstreamLimiter]:
    clock = FakeClock()
    return clock, UpstreamLimiter(concurrency, rpm, clock, margin_s=MARGIN, **kw)


async def start_times(clock: FakeClock, limiter: UpstreamLimiter, n: int) -> list[float]:
    """Acquire-and-release ``n`` times in a row as fast as the limiter allows."""
    times: list[float] = []

    async def go() -> None:
        for _ in range(n):
            permit = await limiter.acquire()
            permit.sent()  # the request leaves at once
            permit.release()
            times.append(clock.now())

    task = asyncio.create_task(go())
    await clock.run_until(task.done)
    await task
    return times


def most_in_window(times: list[float], window: float) -> int:
    """The largest number of starts inside any half-open interval of length ``window``."""
    return max(sum(1 for t in times if s <= t < s + window) for s in times)


async def test_wait_event_true_when_set_false_on_timeout():
    clock = FakeClock()
    event = asyncio.Event()
    waiting = asyncio.create_task(wait_event(event, 5.0, clock))
    await clock.advance(1.0)
    event.set()
    await clock.settle()
    assert waiting.result() is True
    event.clear()
    timing_out = asyncio.create_task(wait_event(event, 5.0, clock))
    await clock.advance(5.0)
    assert timing_out.result() is False
    assert clock.next_deadline() is None  # the loser was cancelled, nothing left sleeping


async def test_concurrency_cap():
    clock, limiter = make(concurrency=2)
    first, second = await limiter.acquire(), await limiter.acquire()
    third = asyncio.create_task(limiter.acquire())
    await clock.advance(100.0)
    assert not third.done() and limiter.in_flight == 2
    first.release()
    await clock.settle()
    assert third.done() and limiter.in_flight == 2
    second.release()
    third.result().release()
    assert limiter.in_flight == 0


async def test_rpm_sliding_window_is_exact():
    clock, limiter = make(rpm=3)  # ceil(3/60) = 1 start per second as well
    t0 = clock.now()
    times = await start_times(clock, limiter, 4)
    assert times == pytest.approx([t0, t0 + 1 + MARGIN, t0 + 2 * (1 + MARGIN), t0 + 60 + MARGIN])
    assert limiter.starts_in_last_minute() == 3  # the first start just left the window


async def test_per_second_cap_from_rpm():
    clock, limiter = make(rpm=120)  # the vendor enforces 120/min as 2/s
    times = await start_times(clock, limiter, 8)
    assert most_in_window(times, 1.0 + MARGIN) == 2
    assert times[-1] - times[0] == pytest.approx(3 * (1 + MARGIN))


async def test_no_burst_beyond_window_after_idle():
    """A token bucket refills while idle and bursts past a sliding window; a log does not."""
    clock, limiter = make(rpm=20)
    times = await start_times(clock, limiter, 20)
    await clock.advance(45.0)  # idle: a bucket would be nearly full again
    times += await start_times(clock, limiter, 25)
    assert most_in_window(times, 60.0 + MARGIN) == 20
    assert most_in_window(times, 1.0 + MARGIN) == 1


async def test_pause_delays_every_start_and_extends_never_shortens():
    clock, limiter = make()
    t0 = clock.now()
    limiter.pause(10.0)
    limiter.pause(3.0)  # shorter: ignored
    assert limiter.delay_until_ready() == pytest.approx(10.0)
    waiters = [asyncio.create_task(limiter.acquire()) for _ in range(3)]
    await clock.advance(5.0)
    limiter.pause(20.0)  # extends to t0 + 25 while they wait
    await clock.run_until(lambda: all(w.done() for w in waiters))
    assert [w.result().granted_at for w in waiters] == pytest.approx([t0 + 25.0] * 3)


async def test_acquire_is_fifo():
    clock, limiter = make(concurrency=1)
    held = await limiter.acquire()
    order: list[str] = []

    async def take(name: str) -> None:
        permit = await limiter.acquire()
        order.append(name)
        await clock.sleep(1.0)
        permit.release()

    tasks = []
    for name in "abcd":
        tasks.append(asyncio.create_task(take(name)))
        await clock.settle()
    held.release()
    await clock.run_until(lambda: all(t.done() for t in tasks))
    assert order == list("abcd")


async def test_gate_pauses_on_rate_limited_and_reraises():
    clock, limiter = make()
    gate = limiter.gate()
    with pytest.raises(RateLimited):
        async with gate.attempt():
            raise RateLimited("429", retry_after=7.0)
    assert limiter.pause_remaining() == pytest.approx(7.0)
    assert limiter.in_flight == 0 and gate.rate_limited == 1
    await clock.advance(7.0)
    with pytest.raises(RateLimited):
        async with gate.attempt():
            raise RateLimited("429 without Retry-After")
    assert limiter.pause_remaining() == pytest.approx(limiter.default_pause_s)


async def test_gate_does_not_pause_on_other_errors():
    clock, limiter = make()
    with pytest.raises(ServerError):
        async with limiter.gate().attempt():
            raise ServerError("500")
    assert limiter.pause_remaining() == 0 and limiter.in_flight == 0


async def test_first_permit_is_used_once():
    clock, limiter = make()
    first = await limiter.acquire()
    gate = limiter.gate(first_permit=first)
    async with gate.attempt() as permit:
        assert permit is first
        permit.sent()
    assert first.released and gate.sent
    async with gate.attempt() as retry:
        assert isinstance(retry, Permit) and retry is not first
        retry.sent()
    assert limiter.in_flight == 0 and gate.attempts == 2
    assert limiter.starts_in_last_minute() == 2


async def test_unused_permit_does_not_consume_a_window_slot():
    clock, limiter = make(rpm=1)
    limiter.gate(first_permit=await limiter.acquire()).close()  # never attempted
    assert limiter.starts_in_last_minute() == 0 and limiter.delay_until_ready() == 0
    (await limiter.acquire()).release()  # released without being sent
    assert limiter.starts_in_last_minute() == 0 and limiter.delay_until_ready() == 0
    permit = await asyncio.wait_for(limiter.acquire(), 1)  # granted at once, no fake time passed
    permit.sent()
    permit.release()
    assert limiter.starts_in_last_minute() == 1
    assert limiter.delay_until_ready() == pytest.approx(60 + MARGIN)


async def test_release_is_idempotent_and_permit_is_a_context_manager():
    clock, limiter = make(concurrency=1)
    with await limiter.acquire() as permit:
        assert limiter.in_flight == 1
    permit.release()
    assert limiter.in_flight == 0
    async with limiter.permit():
        assert limiter.in_flight == 1
    assert limiter.in_flight == 0


async def test_average_hold_time_tracks_releases():
    clock, limiter = make(expected_hold_s=15.0, hold_alpha=0.5)
    permit = await limiter.acquire()
    permit.sent()
    await clock.advance(5.0)
    permit.release()
    assert limiter.avg_hold_s == pytest.approx(10.0)


async def test_delay_until_ready_estimates_a_full_house():
    clock, limiter = make(concurrency=1, expected_hold_s=15.0)
    permit = await limiter.acquire()
    await clock.advance(5.0)
    assert limiter.delay_until_ready() == pytest.approx(10.0)
    permit.release()


# -- a start is what the provider counts: the request leaving (issue 8.2) ------------------------------


async def test_a_start_counts_from_when_its_request_leaves_not_from_the_grant():
    """Jobs wait between their permit and their request (a read, the store's write lock). The
    provider counts arrivals, so the windows must hold for the moments the requests leave."""
    clock, limiter = make(concurrency=4, rpm=120)  # 2 per second
    sends: list[float] = []
    waits = [0.6, 0.6, 0.0, 0.0, 0.3, 0.0, 0.6, 0.1, 0.0, 0.0]

    async def job(wait: float) -> None:
        async with limiter.gate().attempt() as permit:
            await clock.sleep(wait)  # reading the job, waiting for the store
            permit.sent()
            sends.append(clock.now())
            await clock.sleep(0.2)  # the generation

    tasks = [asyncio.create_task(job(wait)) for wait in waits]
    await clock.run_until(lambda: all(t.done() for t in tasks))
    assert len(sends) == len(waits)
    assert most_in_window(sends, 1.0 + MARGIN) == 2


async def test_a_permit_not_yet_sent_counts_as_starting_now():
    clock, limiter = make(rpm=60)  # 1 per second
    first = await limiter.acquire()
    second = asyncio.create_task(limiter.acquire())
    await clock.advance(5.0)
    assert not second.done()  # the first may leave at any moment: it holds the second's slot
    first.sent()
    await clock.settle()
    assert not second.done()  # it left just now: the next start is a second (and margin) away
    await clock.advance(1.0 + MARGIN)
    assert second.done()


async def test_a_permit_released_unsent_frees_its_window_slot_at_once():
    clock, limiter = make(rpm=60)
    first = await limiter.acquire()
    second = asyncio.create_task(limiter.acquire())
    await clock.settle()
    first.release()  # e.g. the job turned out to be a cache hit
    await clock.settle()
    assert second.done()


async def test_the_gate_knows_whether_a_request_left():
    clock, limiter = make()
    gate = limiter.gate(first_permit=await limiter.acquire())
    assert not gate.sent
    async with gate.attempt() as permit:
        assert not gate.sent
        permit.sent()
        assert gate.sent  # in flight: the provider may be generating (and billing) it
    assert gate.sent


async def test_a_permit_granted_ahead_of_its_window_sends_no_earlier():
    """lead_s: the work between permit and request overlaps the wait for the window; the
    request itself still leaves when the window opens, never before."""
    clock = FakeClock()
    limiter = UpstreamLimiter(4, 60, clock, margin_s=MARGIN, lead_s=0.2)  # one start a second
    t0 = clock.now()
    sends: list[float] = []
    granted: list[float] = []

    async def job() -> None:
        permit = await limiter.acquire()
        granted.append(clock.now())
        async with limiter.gate(first_permit=permit).attempt() as attempt:
            attempt.sent()
            sends.append(clock.now())

    tasks = [asyncio.create_task(job()) for _ in range(3)]
    await clock.run_until(lambda: all(t.done() for t in tasks))
    assert sends == pytest.approx([t0, t0 + 1 + MARGIN, t0 + 2 * (1 + MARGIN)])
    assert granted == pytest.approx([t0, t0 + 1 + MARGIN - 0.2, t0 + 2 * (1 + MARGIN) - 0.2])


async def test_a_permit_granted_ahead_counts_from_its_window_for_the_next_one():
    clock = FakeClock()
    limiter = UpstreamLimiter(4, 60, clock, margin_s=MARGIN, lead_s=0.5)
    t0 = clock.now()
    (await limiter.acquire()).sent()
    early = asyncio.create_task(limiter.acquire())
    await clock.run_until(early.done)
    assert clock.now() - t0 == pytest.approx(1 + MARGIN - 0.5)  # granted half a second ahead
    assert early.result().not_before - t0 == pytest.approx(1 + MARGIN)

    async def send_when_due(permit) -> None:
        await clock.sleep(permit.not_before - clock.now())
        permit.sent()

    sending = asyncio.create_task(send_when_due(early.result()))
    third = asyncio.create_task(limiter.acquire())  # counts the early one as starting at 1.05
    await clock.run_until(third.done)
    assert clock.now() - t0 == pytest.approx(2 * (1 + MARGIN) - 0.5)
    assert third.result().not_before - t0 == pytest.approx(2 * (1 + MARGIN))
    await sending
