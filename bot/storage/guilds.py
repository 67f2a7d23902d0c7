"""What admins set per guild: settings overrides, blocked users, prompt rules, and the audit log.

Every change is written together with its audit entry (who, what, when) in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bot.moderation import Rule, RuleKind
from bot.storage.db import Store

COLLECTIONS = (
    "allowed_channels",
    "role_limits",
    "spoiler_channels",
)  # overrides kept in their own tables, one row per item

Fetch = Callable[[str, Sequence[Any]], Awaitable[Iterable[Any]]]

_UPSERT_ROLE_LIMIT = """
    INSERT INTO guild_role_limits (guild_id, role_id, daily, monthly, daily_follows_guild, monthly_follows_guild)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (guild_id, role_id) DO UPDATE SET daily = excluded.daily, monthly = excluded.monthly,
        daily_follows_guild = excluded.daily_follows_guild, monthly_follows_guild = excluded.monthly_follows_guild
"""


@dataclass(frozen=True, slots=True)
class Block:
    guild_id: int
    user_id: int
    reason: str
    expires_at: str | None
    created_by: int
    created_at: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    actor: str
    action: str
    details: dict[str, Any]
    at: str


class GuildStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    # -- settings ------------------------------------------------------------------------------
    # The guild's overrides read as one dict (what `GuildPolicy.with_overrides` takes). Most keys
    # are one JSON object (guild_settings.settings_json); the two collections admins change one
    # item at a time live in their own tables, so each such change is ONE statement and two admins
    # (or two processes) changing different items at once both land. Plain INSERT ... ON CONFLICT
    # and DELETE: the same SQL runs on PostgreSQL.
    async def overrides(self, guild_id: int) -> dict[str, Any]:
        return await _read_overrides(self._store.fetch_all, guild_id)

    async def update_overrides(
        self, guild_id: int, changes: dict[str, Any], *, actor: int, remove: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """Merge `changes` into the guild's overrides (and drop `remove`), audited; returns the result.

        A collection ("allowed_channels", "role_limits") given here is replaced whole; to change
        one item, use allow_channel / set_role_limit / clear_role_limit.
        """
        scalars = {k: v for k, v in changes.items() if k not in COLLECTIONS}
        async with self._store.transaction() as db:
            # Read and write with no other writer interleaving: SQLite's BEGIN IMMEDIATE holds the one
            # write lock; on PostgreSQL the row (created first if need be) is locked FOR UPDATE.
            await db.execute(
                "INSERT INTO guild_settings (guild_id, settings_json, updated_at, updated_by) VALUES (?, '{}', ?, ?)"
                " ON CONFLICT (guild_id) DO NOTHING",
                (guild_id, self._store.now(), actor),
            )
            cursor = await db.execute(
                "SELECT settings_json FROM guild_settings WHERE guild_id = ?" + self._store.for_update, (guild_id,)
            )
            row = await cursor.fetchone()
            current = json.loads(row[0]) if row else {}
            merged = {k: v for k, v in {**current, **scalars}.items() if k not in remove and k not in COLLECTIONS}
            await db.execute(
                """
                INSERT INTO guild_settings (guild_id, settings_json, updated_at, updated_by)
                VALUES (?, ?, ?, ?)
                ON CONFLICT (guild_id) DO UPDATE SET settings_json = excluded.settings_json,
                    updated_at = excluded.updated_at, updated_by = excluded.updated_by
                """,
                (guild_id, json.dumps(merged, sort_keys=True), self._store.now(), actor),
            )
            if "allowed_channels" in changes or "allowed_channels" in remove:
                await db.execute("DELETE FROM guild_allowed_channels WHERE guild_id = ?", (guild_id,))
                await db.executemany(
                    "INSERT INTO guild_allowed_channels (guild_id, channel_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    [(guild_id, int(c)) for c in changes.get("allowed_channels", [])],
                )
            if "role_limits" in changes or "role_limits" in remove:
                await db.execute("DELETE FROM guild_role_limits WHERE guild_id = ?", (guild_id,))
                for role_id, limit in changes.get("role_limits", {}).items():
                    await db.execute(_UPSERT_ROLE_LIMIT, _role_limit_row(guild_id, int(role_id), limit))
            await self._audit(db, guild_id, actor, "settings", {"set": changes, "removed": list(remove)})
            return await _read_overrides(db.execute_fetchall, guild_id)

    async def allow_channel(self, guild_id: int, channel_id: int, allowed: bool, *, actor: int) -> list[int]:
        """Add (or remove) one allowed channel, audited; returns the guild's allowed channels after it."""
        async with self._store.transaction() as db:
            if allowed:
                await db.execute(
                    "INSERT INTO guild_allowed_channels (guild_id, channel_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (guild_id, channel_id),
                )
            else:
                await db.execute(
                    "DELETE FROM guild_allowed_channels WHERE guild_id = ? AND channel_id = ?", (guild_id, channel_id)
                )
            channels = await _allowed_channels(db.execute_fetchall, guild_id)
            # the audit keeps its shape: the resulting list, as when the list was one JSON value
            await self._audit(db, guild_id, actor, "settings", {"set": {"allowed_channels": channels}, "removed": []})
        return channels

    async def require_spoiler(self, guild_id: int, channel_id: int, required: bool, *, actor: int) -> list[int]:
        """Add (or remove) one channel where images are posted as spoilers, audited; returns the list after it."""
        async with self._store.transaction() as db:
            if required:
                await db.execute(
                    "INSERT INTO guild_spoiler_channels (guild_id, channel_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (guild_id, channel_id),
                )
            else:
                await db.execute(
                    "DELETE FROM guild_spoiler_channels WHERE guild_id = ? AND channel_id = ?", (guild_id, channel_id)
                )
            channels = await _spoiler_channels(db.execute_fetchall, guild_id)
            await self._audit(db, guild_id, actor, "settings", {"set": {"spoiler_channels": channels}, "removed": []})
        return channels

    async def set_role_limit(
        self, guild_id: int, role_id: int, limit: dict[str, int | None], *, actor: int
    ) -> dict[str, dict[str, int | None]]:
        """Set (replace) one role's limits, audited; a period missing from `limit` follows the guild's.

        Returns the guild's role limits after it ({"<role>": {"daily": .., "monthly": ..}})."""
        async with self._store.transaction() as db:
            await db.execute(_UPSERT_ROLE_LIMIT, _role_limit_row(guild_id, role_id, limit))
            roles = await _role_limits(db.execute_fetchall, guild_id)
            await self._audit(db, guild_id, actor, "settings", {"set": {"role_limits": roles}, "removed": []})
        return roles

    async def clear_role_limit(
        self, guild_id: int, role_id: int, *, actor: int
    ) -> dict[str, dict[str, int | None]] | None:
        """Drop one role's limits, audited; None (and nothing audited) if the role had none."""
        async with self._store.transaction() as db:
            cursor = await db.execute(
                "DELETE FROM guild_role_limits WHERE guild_id = ? AND role_id = ?", (guild_id, role_id)
            )
            if not cursor.rowcount:
                return None
            roles = await _role_limits(db.execute_fetchall, guild_id)
            await self._audit(db, guild_id, actor, "settings", {"set": {"role_limits": roles}, "removed": []})
        return roles

    # -- blocks --------------------------------------------------------------------------------
    async def block(self, guild_id: int, user_id: int, *, reason: str, expires_at: str | None, actor: int) -> None:
        async with self._store.transaction() as db:
            await db.execute(
                """
                INSERT INTO blocks (guild_id, user_id, reason, expires_at, created_by, created_at)
                VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (guild_id, user_id) DO UPDATE SET reason = excluded.reason,
                    expires_at = excluded.expires_at, created_by = excluded.created_by,
                    created_at = excluded.created_at
                """,
                (guild_id, user_id, reason, expires_at, actor, self._store.now()),
            )
            await self._audit(db, guild_id, actor, "block", {"user": user_id, "reason": reason, "until": expires_at})

    async def unblock(self, guild_id: int, user_id: int, *, actor: int) -> bool:
        async with self._store.transaction() as db:
            cursor = await db.execute(  # an expired block is not lifted again (nothing to audit)
                "DELETE FROM blocks WHERE guild_id = ? AND user_id = ? AND (expires_at IS NULL OR expires_at > ?)",
                (guild_id, user_id, self._store.now()),
            )
            if cursor.rowcount:
                await self._audit(db, guild_id, actor, "unblock", {"user": user_id})
            return cursor.rowcount > 0

    async def active_block(self, guild_id: int, user_id: int) -> Block | None:
        row = await self._store.fetch_one(
            "SELECT * FROM blocks WHERE guild_id = ? AND user_id = ? AND (expires_at IS NULL OR expires_at > ?)",
            (guild_id, user_id, self._store.now()),
        )
        return Block(**dict(row)) if row else None

    async def blocks(self, guild_id: int) -> list[Block]:
        rows = await self._store.fetch_all(
            "SELECT * FROM blocks WHERE guild_id = ? AND (expires_at IS NULL OR expires_at > ?) ORDER BY created_at",
            (guild_id, self._store.now()),
        )
        return [Block(**dict(row)) for row in rows]

    # -- prompt rules --------------------------------------------------------------------------
    async def add_rule(self, guild_id: int, kind: RuleKind, pattern: str, reason: str, *, actor: int) -> Rule:
        async with self._store.transaction() as db:
            cursor = await db.execute(
                "INSERT INTO prompt_rules (guild_id, kind, pattern, reason, created_by, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (guild_id, kind, pattern, reason, actor, self._store.now()),
            )
            rule_id = int((await cursor.fetchone())[0])
            await self._audit(db, guild_id, actor, "rule_add", {"id": rule_id, "kind": kind, "pattern": pattern})
        return Rule(rule_id, kind, pattern, reason)

    async def remove_rule(self, guild_id: int, rule_id: int, *, actor: int) -> bool:
        async with self._store.transaction() as db:
            cursor = await db.execute("DELETE FROM prompt_rules WHERE guild_id = ? AND id = ?", (guild_id, rule_id))
            if cursor.rowcount:
                await self._audit(db, guild_id, actor, "rule_remove", {"id": rule_id})
            return cursor.rowcount > 0

    async def rules(self, guild_id: int) -> list[Rule]:
        rows = await self._store.fetch_all(
            "SELECT id, kind, pattern, reason FROM prompt_rules WHERE guild_id = ? ORDER BY id", (guild_id,)
        )
        return [Rule(row["id"], row["kind"], row["pattern"], row["reason"]) for row in rows]

    # -- the audit log and refusals ------------------------------------------------------------
    async def audit(self, guild_id: int, actor: int | str, action: str, details: dict[str, Any]) -> None:
        async with self._store.transaction() as db:
            await self._audit(db, guild_id, actor, action, details)

    async def audit_log(self, guild_id: int, limit: int = 50) -> list[AuditEntry]:
        rows = await self._store.fetch_all(
            "SELECT actor, action, details_json, at FROM audit_log WHERE guild_id = ? ORDER BY id DESC LIMIT ?",
            (guild_id, limit),
        )
        return [AuditEntry(r["actor"], r["action"], json.loads(r["details_json"]), r["at"]) for r in rows]

    async def record_refusal(self, guild_id: int | None, user_id: int | None, reason: str, detail: str) -> None:
        await self._store.write(
            "INSERT INTO refusals (guild_id, user_id, reason, detail, at) VALUES (?, ?, ?, ?, ?)",
            (guild_id, user_id, reason, detail[:500], self._store.now()),
        )

    async def _audit(self, db: Any, guild_id: int, actor: int | str, action: str, details: dict[str, Any]) -> None:
        await db.execute(
            "INSERT INTO audit_log (guild_id, actor, action, details_json, at) VALUES (?, ?, ?, ?, ?)",
            (
                guild_id,
                str(actor),
                action,
                json.dumps(details, ensure_ascii=False, sort_keys=True),
                self._store.now(),
            ),
        )


# -- reading the overrides (through the reader, or the writer inside a transaction) ----------------------


async def _read_overrides(fetch: Fetch, guild_id: int) -> dict[str, Any]:
    rows = list(await fetch("SELECT settings_json FROM guild_settings WHERE guild_id = ?", (guild_id,)))
    found: dict[str, Any] = json.loads(rows[0][0]) if rows else {}
    found = {k: v for k, v in found.items() if k not in COLLECTIONS}
    if channels := await _allowed_channels(fetch, guild_id):
        found["allowed_channels"] = channels
    if roles := await _role_limits(fetch, guild_id):
        found["role_limits"] = roles
    if spoilers := await _spoiler_channels(fetch, guild_id):
        found["spoiler_channels"] = spoilers
    return found


async def _spoiler_channels(fetch: Fetch, guild_id: int) -> list[int]:
    rows = await fetch(
        "SELECT channel_id FROM guild_spoiler_channels WHERE guild_id = ? ORDER BY channel_id", (guild_id,)
    )
    return [int(r[0]) for r in rows]


async def _allowed_channels(fetch: Fetch, guild_id: int) -> list[int]:
    rows = await fetch(
        "SELECT channel_id FROM guild_allowed_channels WHERE guild_id = ? ORDER BY channel_id", (guild_id,)
    )
    return [int(r[0]) for r in rows]


async def _role_limits(fetch: Fetch, guild_id: int) -> dict[str, dict[str, int | None]]:
    rows = await fetch(
        "SELECT role_id, daily, monthly, daily_follows_guild, monthly_follows_guild FROM guild_role_limits"
        " WHERE guild_id = ? ORDER BY role_id",
        (guild_id,),
    )
    roles: dict[str, dict[str, int | None]] = {}
    for role_id, daily, monthly, daily_follows, monthly_follows in rows:
        limit: dict[str, int | None] = {}
        if not daily_follows:
            limit["daily"] = daily
        if not monthly_follows:
            limit["monthly"] = monthly
        roles[str(role_id)] = limit
    return roles


def _role_limit_row(guild_id: int, role_id: int, limit: dict[str, int | None]) -> tuple[Any, ...]:
    return (
        guild_id,
        role_id,
        limit.get("daily"),
        limit.get("monthly"),
        "daily" not in limit,
        "monthly" not in limit,
    )
