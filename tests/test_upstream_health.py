"""The upstream's recent outcomes for /imagine-admin status: by kind, over an hour and a day, in
bounded memory (minute counters), whatever the rate of attempts."""

from __future__ import annotations

from bot.imaging.errors import (
    AuthenticationFailed,
    BadRequest,
    ContentRejected,
    MalformedResponse,
    RateLimited,
    ServerError,
    Timeout,
)
from bot.upstream_health import DAY_MINUTES, OutcomeCounts, UpstreamHealth, outcome_of


class Now:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_outcomes_are_sorted_by_whose_fault_they_are() -> None:
    assert outcome_of(None) == "ok"
    assert outcome_of(RateLimited("429", retry_after=3)) == "rate_limited"
    assert outcome_of(BadRequest("400")) == outcome_of(ContentRejected("unsafe")) == "refused"
    for error in (ServerError("503"), Timeout("slow"), MalformedResponse("junk"), AuthenticationFailed("401")):
        assert outcome_of(error) == "error"


def test_counts_in_the_last_hour_and_day_leave_out_older_attempts() -> None:
    now = Now()
    health = UpstreamHealth(now)
    health.record_attempt(ServerError("503"))  # 25 h before the last three: forgotten
    now.t += 3600
    health.record_attempt(RateLimited("429"))  # exactly 24 h before them: out of the day too
    now.t += 22 * 3600 + 59 * 60
    health.record_attempt(ServerError("503"))  # 61 min before them: in the day, not the hour
    now.t += 60 * 60 + 60
    health.record_attempt(None)
    health.record_attempt(RateLimited("429"))
    health.record_attempt(BadRequest("400"))
    assert health.last_hour() == OutcomeCounts(ok=1, rate_limited=1, refused=1, error=0)
    assert health.last_day() == OutcomeCounts(ok=1, rate_limited=1, refused=1, error=1)
    now.t += 60 * 60
    assert health.last_hour() == OutcomeCounts()
    assert health.last_day() == OutcomeCounts(ok=1, rate_limited=1, refused=1, error=1)


def test_memory_stays_bounded_however_many_attempts() -> None:
    now = Now()
    health = UpstreamHealth(now)
    for _ in range(3 * DAY_MINUTES):  # three days, 100 attempts a minute
        for _ in range(100):
            health.record_attempt(None)
        now.t += 60
    assert len(health._minutes) <= DAY_MINUTES + 1
    assert health.last_hour().ok == 60 * 100 - 100  # the current minute has none yet
    assert health.last_day().ok == (DAY_MINUTES - 1) * 100
