"""What server admins can change and read, without restarting the bot (no discord imports).

Every change is validated first, written with its audit entry, drops the guild's cached
policy so the next request sees it, and returns a one-line description for the moderation
log ("<@actor> set the daily limit to 10").
"""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from bot.errors import InvalidInput
from bot.gatekeeper import Gatekeeper
from bot.i18n import Money, Number, Text, items
from bot.limits import GuildPolicy, periods, validate_timezone
from bot.moderation import Rule, RuleKind, compile_rule
from bot.money import cny_to_fen
from bot.storage.db import Store, iso
from bot.storage.guilds import Block
from bot.storage.reports import LEDGER_COLUMNS, GuildReport, guild_ledger, guild_report

UNSET: Any = object()
#: what Chinese-speaking admins type for "no limit" (the options' descriptions say 'unlimited')
_UNLIMITED_ZH = ("不限", "无限", "無限", "无", "無")
REASON_MAX_CHARS = 200


def parse_cny(value: str) -> int | None:
    """'12.5' -> 1250 fen; 'none'/'unlimited' -> None (no cap)."""
    text = value.strip().lower().removeprefix("¥")
    if text in ("none", "unlimited", "off", "", *_UNLIMITED_ZH):
        return None
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise InvalidInput(Text("input.cny", value=value)) from None
    if not amount.is_finite():
        raise InvalidInput(Text("input.cny", value=value))
    try:
        fen = cny_to_fen(amount)  # the one money rule: whole fen only, never rounded
    except ValueError:  # finer than a fen (or past what a 64-bit fen count holds)
        fen = None
    if fen is None or fen < 0:
        raise InvalidInput(Text("input.cny_precision", value=value))
    return fen


def parse_count(value: str) -> int | None:
    """'20' -> 20; 'unlimited'/'none' -> None."""
    text = value.strip().lower()
    if text in ("none", "unlimited", "off", *_UNLIMITED_ZH):
        return None
    if not text.isdecimal() or not text.isascii():
        raise InvalidInput(Text("input.count", value=value))
    return int(text)


def _limit_text(value: int | None) -> Text:
    return Text("common.unlimited") if value is None else Text("common.images", count=Number(value))


def _fen_text(value: int | None) -> Text | Money:
    return Text("common.unlimited") if value is None else Money(value)


class GuildAdmin:
    def __init__(self, store: Store, gatekeeper: Gatekeeper) -> None:
        self._store = store
        self._gate = gatekeeper
        self._guilds = gatekeeper.guilds

    async def policy(self, guild_id: int) -> GuildPolicy:
        return await self._gate.policy(guild_id)

    # -- limits ---------------------------------------------------------------------------------
    async def set_limits(
        self,
        guild_id: int,
        actor: int,
        *,
        daily: int | None = UNSET,
        monthly: int | None = UNSET,
        cooldown_s: int = UNSET,
        daily_budget_fen: int | None = UNSET,
        monthly_budget_fen: int | None = UNSET,
        timezone: str = UNSET,
    ) -> str:
        changes: dict[str, Any] = {}
        said: list[Text] = []
        for key, value, label in (
            ("user_daily_limit", daily, "label.images_per_user_day"),
            ("user_monthly_limit", monthly, "label.images_per_user_month"),
        ):
            if value is not UNSET:
                _check_count(value, label)
                changes[key] = value
                said.append(Text("admin.change", label=Text(label), value=_count_text(value)))
        if cooldown_s is not UNSET:
            if not 0 <= cooldown_s <= 86_400:
                raise InvalidInput(Text("input.cooldown_range"))
            changes["cooldown_s"] = cooldown_s
            said.append(Text("admin.change_cooldown", seconds=Number(cooldown_s)))
        for key, value, label in (
            ("daily_budget_fen", daily_budget_fen, "label.daily_budget"),
            ("monthly_budget_fen", monthly_budget_fen, "label.monthly_budget"),
        ):
            if value is not UNSET:
                if value is not None and not 0 <= value <= 100_000_000:
                    raise InvalidInput(Text("input.budget_range", label=Text(label)))
                changes[key] = value
                said.append(Text("admin.change", label=Text(label), value=_fen_text(value)))
        if timezone is not UNSET:
            changes["timezone"] = validate_timezone(timezone)
            said.append(Text("admin.change", label=Text("label.timezone"), value=timezone))
        if not changes:
            raise InvalidInput(Text("input.nothing_to_change"))
        await self._guilds.update_overrides(guild_id, changes, actor=actor)
        self._gate.forget(guild_id)
        return Text("admin.set", actor=actor, changes=items(said))

    async def set_role_limit(
        self, guild_id: int, actor: int, role_id: int, *, daily: int | None, monthly: int | None = UNSET
    ) -> str:
        """A role's limits; a period left UNSET follows the guild's own limit for it."""
        _check_count(daily, "label.images_per_day")
        limit: dict[str, int | None] = {"daily": daily}
        month_text = Text("admin.role_month_server")
        if monthly is not UNSET:
            _check_count(monthly, "label.images_per_month")
            limit["monthly"] = monthly
            month_text = Text("admin.role_month", limit=_limit_text(monthly))
        await self._guilds.set_role_limit(guild_id, role_id, limit, actor=actor)  # one statement: see GuildStore
        self._gate.forget(guild_id)
        return Text("admin.role_set", actor=actor, role=role_id, daily=_limit_text(daily), monthly=month_text)

    async def clear_role_limit(self, guild_id: int, actor: int, role_id: int) -> str:
        if await self._guilds.clear_role_limit(guild_id, role_id, actor=actor) is None:
            raise InvalidInput(Text("input.role_no_override"))
        self._gate.forget(guild_id)
        return Text("admin.role_cleared", actor=actor, role=role_id)

    # -- blocks ---------------------------------------------------------------------------------
    async def block(
        self, guild_id: int, actor: int, user_id: int, reason: str, duration: timedelta | None = None
    ) -> str:
        reason = _reason(reason)
        expires = iso(self._gate.now() + duration) if duration else None
        await self._guilds.block(guild_id, user_id, reason=reason, expires_at=expires, actor=actor)
        if duration:
            return Text(
                "admin.blocked_for", actor=actor, user=user_id, duration=_duration_text(duration), reason=reason
            )
        return Text("admin.blocked", actor=actor, user=user_id, reason=reason)

    async def unblock(self, guild_id: int, actor: int, user_id: int) -> str:
        if not await self._guilds.unblock(guild_id, user_id, actor=actor):
            raise InvalidInput(Text("input.not_blocked"))
        return Text("admin.unblocked", actor=actor, user=user_id)

    async def blocks(self, guild_id: int) -> list[Block]:
        return await self._guilds.blocks(guild_id)

    # -- prompt rules ---------------------------------------------------------------------------
    async def add_rule(self, guild_id: int, actor: int, kind: RuleKind, pattern: str, reason: str) -> tuple[Rule, str]:
        # refuses invalid or catastrophically slow expressions (the vetting runs probes: off the loop)
        await asyncio.to_thread(compile_rule, kind, pattern)
        rule = await self._guilds.add_rule(guild_id, kind, pattern.strip(), _reason(reason), actor=actor)
        self._gate.forget(guild_id)
        return rule, Text(
            "admin.rule_added", actor=actor, id=rule.id, kind=kind, pattern=rule.pattern, reason=rule.reason
        )

    async def remove_rule(self, guild_id: int, actor: int, rule_id: int) -> str:
        if not await self._guilds.remove_rule(guild_id, rule_id, actor=actor):
            raise InvalidInput(Text("input.no_rule", id=rule_id))
        self._gate.forget(guild_id)
        return Text("admin.rule_removed", actor=actor, id=rule_id)

    async def rules(self, guild_id: int) -> list[Rule]:
        return await self._guilds.rules(guild_id)

    # -- channels and the log -------------------------------------------------------------------
    async def allow_channel(self, guild_id: int, actor: int, channel_id: int, allowed: bool) -> str:
        channels = await self._guilds.allow_channel(guild_id, channel_id, allowed, actor=actor)  # one statement
        self._gate.forget(guild_id)
        scope = Text("admin.scope_allowed" if channels else "admin.scope_every")
        key = "admin.channel_allowed" if allowed else "admin.channel_disallowed"
        return Text(key, actor=actor, channel=channel_id, scope=scope)

    async def require_spoiler(self, guild_id: int, actor: int, channel_id: int, required: bool) -> str:
        await self._guilds.require_spoiler(guild_id, channel_id, required, actor=actor)  # one statement
        self._gate.forget(guild_id)
        key = "admin.spoiler_required" if required else "admin.spoiler_optional"
        return Text(key, actor=actor, channel=channel_id)

    async def set_private(self, guild_id: int, actor: int, allowed: bool) -> str:
        await self._guilds.update_overrides(guild_id, {"private_allowed": allowed}, actor=actor)
        self._gate.forget(guild_id)
        return Text("admin.private_allowed" if allowed else "admin.private_forbidden", actor=actor)

    async def set_log_channel(self, guild_id: int, actor: int, channel_id: int | None) -> str:
        if channel_id is None:
            await self._guilds.update_overrides(guild_id, {}, actor=actor, remove=("log_channel_id",))
        else:
            await self._guilds.update_overrides(guild_id, {"log_channel_id": channel_id}, actor=actor)
        self._gate.forget(guild_id)
        if channel_id:
            return Text("admin.log_set", actor=actor, channel=channel_id)
        return Text("admin.log_off", actor=actor)

    async def set_cache(self, guild_id: int, actor: int, *, enabled: bool | None, counts: bool | None) -> str:
        changes: dict[str, Any] = {}
        if enabled is not None:
            changes["cache_enabled"] = enabled
        if counts is not None:
            changes["cache_counts_toward_limits"] = counts
        if not changes:
            raise InvalidInput(Text("input.nothing_to_change"))
        await self._guilds.update_overrides(guild_id, changes, actor=actor)
        self._gate.forget(guild_id)
        said = []
        if enabled is not None:
            said.append(Text("admin.cache_on" if enabled else "admin.cache_off"))
        if counts is not None:
            said.append(Text("admin.cache_counts" if counts else "admin.cache_not_counts"))
        if len(said) == 2:
            return Text("admin.cache_changed_both", actor=actor, first=said[0], second=said[1])
        return Text("admin.cache_changed", actor=actor, change=said[0])

    # -- usage ----------------------------------------------------------------------------------
    async def reset_today(self, guild_id: int, actor: int, user_id: int) -> str:
        policy = await self._gate.policy(guild_id)
        day = periods(self._gate.now(), policy.timezone).day
        await self._store.write(
            "UPDATE quota_counters SET used = 0 WHERE scope = 'user_day' AND subject = ? AND period = ?",
            (f"{guild_id}:{user_id}", day),
        )
        await self._guilds.audit(guild_id, actor, "reset_today", {"user": user_id, "day": day})
        return Text("admin.reset", actor=actor, user=user_id)

    async def report(self, guild_id: int, days: int) -> GuildReport:
        until = self._gate.now()
        return await guild_report(self._store, guild_id, iso(until - timedelta(days=days)), iso(until))

    async def export_csv(self, guild_id: int, days: int) -> bytes:
        until = self._gate.now()
        rows = await guild_ledger(self._store, guild_id, iso(until - timedelta(days=days)), iso(until))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=LEDGER_COLUMNS)
        writer.writeheader()
        writer.writerows({k: _no_formula(v) for k, v in row.items()} for row in rows)
        return out.getvalue().encode("utf-8")


def _no_formula(cell: str) -> str:
    """A prompt starting with = + - @ would run as a formula when the CSV is opened in a spreadsheet."""
    return "'" + cell if cell[:1] in ("=", "+", "-", "@") else cell


def _check_count(value: int | None, label: str) -> None:
    if value is not None and not 0 <= value <= 100_000:
        raise InvalidInput(Text("input.count_range", label=Text(label)))


def _count_text(value: int | None) -> Text | Number:
    return Text("common.unlimited") if value is None else Number(value)


def _reason(reason: str) -> str:
    reason = " ".join(reason.split())
    if not reason:
        raise InvalidInput(Text("input.reason_empty"))
    return reason[:REASON_MAX_CHARS]


def _duration_text(duration: timedelta) -> Text:
    hours = duration.total_seconds() / 3600
    if hours >= 24:
        return Text("common.days", count=f"{hours / 24:g}")
    return Text("common.hours", count=f"{hours:g}")
