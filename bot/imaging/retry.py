"""The one retry policy for upstream calls: which outcomes to retry, and how long to wait.

Retried: 429, 408, 5xx, and connection failures where the request never left (the error's
class says `retryable`). Never retried: 400/401/403, content refusals, malformed bodies, and
read timeouts (the provider may already be generating, and billing, that image).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bot.imaging.errors import RateLimited, UpstreamError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 2
    base_delay_s: float = 1.0
    max_delay_s: float = 20.0
    #: a Retry-After longer than this is not waited out here: the error goes to the scheduler
    retry_after_cap_s: float = 60.0


def should_retry(error: UpstreamError, retries_done: int, policy: RetryPolicy) -> bool:
    if retries_done >= policy.max_retries or not error.retryable:
        return False
    if isinstance(error, RateLimited) and (error.retry_after or 0) > policy.retry_after_cap_s:
        return False
    return True


def retry_delay(
    error: UpstreamError, retries_done: int, policy: RetryPolicy, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter; a server's Retry-After wins when it says more."""
    rng = rng or random
    backoff = min(policy.max_delay_s, policy.base_delay_s * (2**retries_done))
    delay = rng.uniform(backoff / 2, backoff)
    if isinstance(error, RateLimited) and error.retry_after is not None:
        delay = max(delay, min(error.retry_after, policy.retry_after_cap_s))
    return delay


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare for APIs and treated as absent)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
