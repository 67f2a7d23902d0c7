"""Read-only summaries of the ledger (the jobs table) for operators."""

from __future__ import annotations

from dataclasses import dataclass

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


async def usage_summary(
    store: Store, *, since: str | None = None, guild_id: int | None = None
) -> UsageSummary:
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
        found = await store.fetch_all(
            f"SELECT {key}, {_COLUMNS} FROM jobs WHERE {condition} {grouping}", params
        )
        return [UsageRow(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in found]

    total = (await rows(None))[0]
    return UsageSummary(
        total=total,
        by_day=await rows("substr(queued_at, 1, 10)"),
        by_requester=await rows("requester"),
    )


def fen_to_cny(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"
