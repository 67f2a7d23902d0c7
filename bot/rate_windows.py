"""The rule of the upstream's sliding windows, shared by the in-process limiter (bot/limiter.py)
and the budget shared between processes (bot/storage/upstream.py)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    concurrency: int
    rpm: int
    per_second: int  # ceil(rpm / 60): the vendor enforces its per-minute limit per second too
    margin_s: float  # added to each window: transit and clock jitter between our stamp and theirs


@dataclass(frozen=True, slots=True)
class LocalView:
    """One process's own use of the upstream, on its own clock (``now``)."""

    now: float
    held: int  # permits granted and not released (in flight, or about to be)
    starts: tuple[float, ...]  # stamped starts, oldest first
    pending: int  # granted, not yet sent: they count as starting now
    paused_until: float


def window_delay(
    starts: Sequence[float],
    pending: int,
    now: float,
    *,
    rpm: int,
    per_second: int,
    margin_s: float,
    paused_until: float = -math.inf,
) -> float:
    """Seconds until the pause and both sliding windows allow one more start (<= 0: now).

    ``starts``: the stamped start times, oldest first; ``pending``: permits granted but not yet
    sent, which count as starting now. A new start at T is allowed iff the rpm-th most recent
    start is at least a minute (plus margin) before T, and likewise per second.
    """
    minute, second = 60.0 + margin_s, 1.0 + margin_s
    first = bisect.bisect_right(starts, now - minute)
    recent = list(starts[first:]) + [now] * pending
    ready = paused_until
    if len(recent) >= rpm:
        ready = max(ready, recent[-rpm] + minute)
    if len(recent) >= per_second:
        ready = max(ready, recent[-per_second] + second)
    return ready - now
