"""How the upstream has been answering this process: every attempt's outcome, by kind, over 24 h.

`/imagine-admin status` shows errors and 429s in the last hour and the last 24 hours. The image
client tells `record_attempt` how each attempt ended (retried ones included: a 429 the client
waited out is still a 429 the provider sent). Memory stays bounded however busy the bot is:
outcomes are counted per minute, and only the last 24 hours of minutes are kept (at most 1,441
small counters), so "the last hour" is exact to the minute.

This is one process's view: on a shared store every process keeps its own.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bot.imaging.errors import BadRequest, RateLimited, UpstreamError

#: ok: an image (or a reply to parse); rate_limited: a 429; refused: a 400 or a content refusal,
#: the request's own fault, not the provider's health; error: everything else (5xx, 408, timeouts,
#: unreachable, malformed replies, 401/403)
Outcome = Literal["ok", "rate_limited", "refused", "error"]

DAY_MINUTES = 24 * 60


def outcome_of(error: UpstreamError | None) -> Outcome:
    if error is None:
        return "ok"
    if isinstance(error, RateLimited):
        return "rate_limited"
    if isinstance(error, BadRequest):
        return "refused"
    return "error"


@dataclass(frozen=True, slots=True)
class OutcomeCounts:
    ok: int = 0
    rate_limited: int = 0
    refused: int = 0
    error: int = 0


class UpstreamHealth:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # (minute number, outcomes in that minute), oldest first; at most a day of minutes
        self._minutes: deque[tuple[int, Counter[str]]] = deque(maxlen=DAY_MINUTES + 1)

    def record_attempt(self, error: UpstreamError | None) -> None:
        """One upstream attempt ended: None for an answer, else the error it raised."""
        minute = self._minute()
        if not self._minutes or self._minutes[-1][0] != minute:
            self._minutes.append((minute, Counter()))
        self._minutes[-1][1][outcome_of(error)] += 1
        self._prune(minute)

    def counts(self, minutes: int) -> OutcomeCounts:
        """Outcomes in the last `minutes` minutes (the current minute counts as one of them)."""
        now = self._minute()
        self._prune(now)
        total: Counter[str] = Counter()
        for minute, outcomes in reversed(self._minutes):
            if minute <= now - minutes:
                break
            total.update(outcomes)
        return OutcomeCounts(**{kind: total[kind] for kind in ("ok", "rate_limited", "refused", "error")})

    def last_hour(self) -> OutcomeCounts:
        return self.counts(60)

    def last_day(self) -> OutcomeCounts:
        return self.counts(DAY_MINUTES)

    def _minute(self) -> int:
        return int(self._clock() // 60)

    def _prune(self, now: int) -> None:
        while self._minutes and self._minutes[0][0] <= now - DAY_MINUTES:
            self._minutes.popleft()
