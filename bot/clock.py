"""Time as a dependency, so the scheduler and the limiter can be tested without real sleeps.

Everything that waits in ``bot.scheduler`` and ``bot.limiter`` waits through a ``Clock``:
production passes ``SystemClock``; tests pass ``tests.clocks.FakeClock``, whose time only moves
when the test says so, which makes minute-long rate-limit windows checkable in milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds and a way to sleep on the same time line."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.monotonic`` (never jumps with NTP) and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


async def wait_event(event: asyncio.Event, timeout: float | None, clock: Clock) -> bool:  # noqa: ASYNC109
    """Wait for ``event`` at most ``timeout`` seconds of ``clock`` time.

    Returns True if the event is set (also when it was set as the timeout expired), False if
    ``clock.sleep(timeout)`` finished first. ``asyncio.wait_for`` would use the loop's real
    time, so the two waits are raced explicitly and the loser is cancelled (and awaited, so no
    task is left pending).
    """
    if event.is_set():
        return True
    if timeout is None:
        await event.wait()
        return True
    if timeout <= 0:
        return False
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(clock.sleep(timeout))
    try:
        await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, sleeper):
            task.cancel()
        await asyncio.gather(waiter, sleeper, return_exceptions=True)
    return event.is_set()
