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
    pending: tuple[float, ...]  # granted, not yet sent: each may start from this time (see window_delay)
    paused_until: float


def window_delay(
    starts: Sequence[float],
    pending: Sequence[float],
    now: float,
    *,
    rpm: int,
    per_second: int,
    margin_s: float,
    paused_until: float = -math.inf,
) -> float:
    """Seconds until the pause and both sliding windows allow one more start (<= 0: now).

    ``starts``: the stamped start times, oldest first; ``pending``: for each permit granted but
    not yet sent, the earliest time it may start (a permit may be granted a little ahead of its
    window, see UpstreamLimiter's ``lead_s``): it counts as starting then, or now if that has
    passed. A new start at T is allowed iff the rpm-th most recent start is at least a minute
    (plus margin) before T, and likewise per second.
    """
    minute, second = 60.0 + margin_s, 1.0 + margin_s
    first = bisect.bisect_right(starts, now - minute)
    recent = sorted([*starts[first:], *(max(now, t) for t in pending)])
    ready = paused_until
    if len(recent) >= rpm:
        ready = max(ready, recent[-rpm] + minute)
    if len(recent) >= per_second:
        ready = max(ready, recent[-per_second] + second)
    return ready - now
