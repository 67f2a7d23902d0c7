"""What admins set per guild: settings overrides, blocked users, prompt rules, and the audit log.

Every change is written together with its audit entry (who, what, when) in one transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bot.moderation import Rule, RuleKind
from bot.storage.db import Store


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
    async def overrides(self, guild_id: int) -> dict[str, Any]:
        row = await self._store.fetch_one("SELECT settings_json FROM guild_settings WHERE guild_id = ?", (guild_id,))
        return json.loads(row["settings_json"]) if row else {}

    async def update_overrides(
        self, guild_id: int, changes: dict[str, Any], *, actor: int, remove: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """Merge `changes` into the guild's overrides (and drop `remove`), audited; returns the result."""
        async with self._store.transaction() as db:
            cursor = await db.execute("SELECT settings_json FROM guild_settings WHERE guild_id = ?", (guild_id,))
            row = await cursor.fetchone()
            current = json.loads(row[0]) if row else {}
            merged = {k: v for k, v in {**current, **changes}.items() if k not in remove}
            await db.execute(
                """
                INSERT INTO guild_settings (guild_id, settings_json, updated_at, updated_by)
                VALUES (?, ?, ?, ?)
                ON CONFLICT (guild_id) DO UPDATE SET settings_json = excluded.settings_json,
                    updated_at = excluded.updated_at, updated_by = excluded.updated_by
                """,
                (guild_id, json.dumps(merged, sort_keys=True), self._store.now(), actor),
            )
            await self._audit(db, guild_id, actor, "settings", {"set": changes, "removed": list(remove)})
        return merged

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
