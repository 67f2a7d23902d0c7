"""The structured fields a log line may carry, for log shippers (LOG_FORMAT=json).

Key log sites (a job queued, started, delivered, failed or refused; an upstream error) pass them
with `extra=`; the JSON formatter (bot/logsetup.py) writes the ones a record carries as fields of
their own, and the text format ignores them (its sentence already says the same).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only a type here: bot/logsetup.py imports this module before anything else
    from bot.storage.jobs import Job

STRUCTURED_FIELDS = ("job_id", "guild_id", "user_id", "state", "latency_ms", "cost_fen", "request_id")


def job_fields(job: Job, **more: Any) -> dict[str, Any]:
    """A job's fields for `extra=`; `more` adds or replaces some (state, cost_fen, latency_ms, ...)."""
    fields: dict[str, Any] = {
        "job_id": job.id,
        "guild_id": job.guild_id,
        "user_id": job.user_id,
        "state": job.state,
        "request_id": job.request_id,
    }
    fields.update(more)
    return {k: v for k, v in fields.items() if v is not None}


def latency_ms(since_iso: str, now: datetime) -> int:
    """Milliseconds from a stored timestamp (e.g. the job's queued_at) to `now`."""
    return max(0, round((now - datetime.fromisoformat(since_iso)).total_seconds() * 1000))
