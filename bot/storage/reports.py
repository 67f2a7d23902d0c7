"""Read-only summaries of the ledger (the jobs table) for operators."""

from __future__ import annotations

from dataclasses import dataclass

from bot.money import fen_to_cny  # CSV cells: "0.18" (also imported from here by older callers)
from bot.storage.db import Store


@dataclass(frozen=True, slots=True)
class UsageRow:
    key: str  # a day (YYYY-MM-DD, UTC) or a requester
    images: int  # delivered
    failures: int
    cost_fen: int  # charged (delivered images)
    upstream_fen: int  # billed by the provider (includes images that failed after generation)


@dataclass(frozen=True, slots=True)
class UsageSummary:
    total: UsageRow
    by_day: list[UsageRow]
    by_requester: list[UsageRow]


_COLUMNS = """
    COUNT(*) FILTER (WHERE state = 'delivered'),
    COUNT(*) FILTER (WHERE state = 'failed'),
    COALESCE(SUM(cost_fen), 0),
    COALESCE(SUM(upstream_fen), 0)
"""


async def usage_summary(store: Store, *, since: str | None = None, guild_id: int | None = None) -> UsageSummary:
    """`since` is an ISO date (UTC) compared with the time a job was queued."""
    where = ["1 = 1"]
    params: list[object] = []
    if since:
        where.append("queued_at >= ?")
        params.append(since)
    if guild_id is not None:
        where.append("guild_id = ?")
        params.append(guild_id)
    condition = " AND ".join(where)

    async def rows(group: str | None) -> list[UsageRow]:
        key = group or "'total'"
        grouping = f"GROUP BY {group} ORDER BY {group}" if group else ""
        found = await store.fetch_all(f"SELECT {key}, {_COLUMNS} FROM jobs WHERE {condition} {grouping}", params)
        return [UsageRow(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in found]

    total = (await rows(None))[0]
    return UsageSummary(
        total=total,
        by_day=await rows("substr(queued_at, 1, 10)"),
        by_requester=await rows("requester"),
    )


# -- per-guild reports for admins -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserSpend:
    user_id: int
    images: int
    cost_fen: int
    failures: int
    content_refusals: int  # the provider's safety refusals of this user's prompts


@dataclass(frozen=True, slots=True)
class GuildReport:
    since: str
    until: str
    images: int
    cost_fen: int
    upstream_fen: int
    failures: int
    top_users: list[UserSpend]
    refusals: dict[str, int]  # reason -> count
    failure_codes: dict[str, int]  # error code -> count


async def guild_report(store: Store, guild_id: int, since: str, until: str, top: int = 10) -> GuildReport:
    """Everything in [since, until) for one guild (times are ISO UTC strings)."""
    span = (guild_id, since, until)
    where = "guild_id = ? AND queued_at >= ? AND queued_at < ?"
    totals = await store.fetch_one(f"SELECT {_COLUMNS} FROM jobs WHERE {where}", span)
    users = await store.fetch_all(
        f"""
        SELECT user_id,
               COUNT(*) FILTER (WHERE state = 'delivered'),
               COALESCE(SUM(cost_fen), 0),
               COUNT(*) FILTER (WHERE state = 'failed'),
               COUNT(*) FILTER (WHERE error_code = 'ContentRejected')
        FROM jobs WHERE {where} GROUP BY user_id
        ORDER BY 3 DESC, 2 DESC, user_id LIMIT ?
        """,
        (*span, top),
    )
    refusals = await store.fetch_all(
        "SELECT reason, COUNT(*) FROM refusals WHERE guild_id = ? AND at >= ? AND at < ? GROUP BY reason",
        span,
    )
    codes = await store.fetch_all(
        f"SELECT error_code, COUNT(*) FROM jobs WHERE {where} AND state = 'failed' GROUP BY error_code", span
    )
    assert totals is not None
    return GuildReport(
        since=since,
        until=until,
        images=int(totals[0]),
        failures=int(totals[1]),
        cost_fen=int(totals[2]),
        upstream_fen=int(totals[3]),
        top_users=[UserSpend(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in users],
        refusals={str(r[0]): int(r[1]) for r in refusals},
        failure_codes={str(r[0]): int(r[1]) for r in codes},
    )


LEDGER_COLUMNS = (
    "job_id",
    "queued_at",
    "finished_at",
    "user_id",
    "command",
    "style",
    "size",
    "state",
    "cost_cny",
    "upstream_cny",
    "request_id",
    "error_code",
    "cache_hit",
    "prompt",
)


async def guild_ledger(store: Store, guild_id: int, since: str, until: str) -> list[dict[str, str]]:
    """The guild's jobs in [since, until), oldest first, as CSV-ready rows."""
    rows = await store.fetch_all(
        "SELECT id, queued_at, finished_at, user_id, command, style, size, state, cost_fen, upstream_fen,"
        " request_id, error_code, cache_hit, prompt FROM jobs"
        " WHERE guild_id = ? AND queued_at >= ? AND queued_at < ? ORDER BY queued_at, id",
        (guild_id, since, until),
    )
    return [
        dict(
            zip(
                LEDGER_COLUMNS,
                (
                    str(r["id"]),
                    r["queued_at"],
                    r["finished_at"] or "",
                    str(r["user_id"] or ""),
                    r["command"],
                    r["style"] or "",
                    r["size"],
                    r["state"],
                    fen_to_cny(r["cost_fen"]),
                    fen_to_cny(r["upstream_fen"]),
                    r["request_id"] or "",
                    r["error_code"] or "",
                    "yes" if r["cache_hit"] else "no",
                    r["prompt"],
                ),
                strict=True,
            )
        )
        for r in rows
    ]


async def counters(store: Store, keys: list[tuple[str, str, str]]) -> dict[str, int]:
    """Current values of quota counters, by scope (for /usage)."""
    found: dict[str, int] = {}
    for scope, subject, period in keys:
        row = await store.fetch_one(
            "SELECT used FROM quota_counters WHERE scope = ? AND subject = ? AND period = ?",
            (scope, subject, period),
        )
        found[scope] = int(row[0]) if row else 0
    return found


@dataclass(frozen=True, slots=True)
class GuildQueue:
    """A guild's unfinished jobs as the store sees them: every process's, on a shared store."""

    waiting: int  # queued and taken by no process yet
    running: int  # taken by a process, being generated, or generated and being delivered
    oldest_queued_at: str | None  # when the longest-waiting of them was queued (the store's clock)


async def guild_queue(store: Store, guild_id: int) -> GuildQueue:
    """One read of the unfinished jobs (a small set, indexed: jobs_unfinished). On a shared queue
    a job claimed by a process is no longer waiting; on SQLite nothing is ever claimed."""
    row = await store.fetch_one(
        "SELECT COUNT(*) FILTER (WHERE state = 'queued' AND claimed_by IS NULL) AS waiting,"
        " COUNT(*) FILTER (WHERE state <> 'queued' OR claimed_by IS NOT NULL) AS running,"
        " MIN(queued_at) FILTER (WHERE state = 'queued' AND claimed_by IS NULL) AS oldest"
        " FROM jobs WHERE state IN ('queued', 'submitting', 'generated') AND guild_id = ?",
        (guild_id,),
    )
    assert row is not None  # an aggregate always answers one row
    return GuildQueue(int(row["waiting"] or 0), int(row["running"] or 0), row["oldest"])
