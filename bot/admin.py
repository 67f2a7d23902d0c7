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
from bot.limits import GuildPolicy, periods, validate_timezone
from bot.moderation import Rule, RuleKind, compile_rule
from bot.money import cny_to_fen, format_cny
from bot.storage.db import Store, iso
from bot.storage.guilds import Block
from bot.storage.reports import LEDGER_COLUMNS, GuildReport, guild_ledger, guild_report

UNSET: Any = object()
REASON_MAX_CHARS = 200


def parse_cny(value: str) -> int | None:
    """'12.5' -> 1250 fen; 'none'/'unlimited' -> None (no cap)."""
    text = value.strip().lower().removeprefix("¥")
    if text in ("none", "unlimited", "off", ""):
        return None
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise InvalidInput(f"'{value}' is not an amount in CNY (e.g. 10 or 12.50, or 'none').") from None
    if not amount.is_finite():
        raise InvalidInput(f"'{value}' is not an amount in CNY (e.g. 10 or 12.50, or 'none').")
    try:
        fen = cny_to_fen(amount)  # the one money rule: whole fen only, never rounded
    except ValueError:  # finer than a fen (or past what a 64-bit fen count holds)
        fen = None
    if fen is None or fen < 0:
        raise InvalidInput(f"'{value}' must be zero or more, with at most two decimals.")
    return fen


def parse_count(value: str) -> int | None:
    """'20' -> 20; 'unlimited'/'none' -> None."""
    text = value.strip().lower()
    if text in ("none", "unlimited", "off"):
        return None
    if not text.isdecimal() or not text.isascii():
        raise InvalidInput(f"'{value}' is not a number of images (e.g. 20, or 'unlimited').")
    return int(text)


def _limit_text(value: int | None, unit: str = "image(s)") -> str:
    return "unlimited" if value is None else f"{value} {unit}"


def _fen_text(value: int | None) -> str:
    return "unlimited" if value is None else format_cny(value)


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
        said: list[str] = []
        for key, value, label in (
            ("user_daily_limit", daily, "images per user per day"),
            ("user_monthly_limit", monthly, "images per user per month"),
        ):
            if value is not UNSET:
                _check_count(value, label)
                changes[key] = value
                said.append(f"{label} to {_limit_text(value, '')}".strip())
        if cooldown_s is not UNSET:
            if not 0 <= cooldown_s <= 86_400:
                raise InvalidInput("The cooldown must be between 0 and 86400 seconds.")
            changes["cooldown_s"] = cooldown_s
            said.append(f"cooldown to {cooldown_s} s")
        for key, value, label in (
            ("daily_budget_fen", daily_budget_fen, "daily budget"),
            ("monthly_budget_fen", monthly_budget_fen, "monthly budget"),
        ):
            if value is not UNSET:
                if value is not None and not 0 <= value <= 100_000_000:
                    raise InvalidInput(f"The {label} must be zero or more (or none).")
                changes[key] = value
                said.append(f"{label} to {_fen_text(value)}")
        if timezone is not UNSET:
            changes["timezone"] = validate_timezone(timezone)
            said.append(f"time zone to {timezone}")
        if not changes:
            raise InvalidInput("Nothing to change: give at least one option.")
        await self._guilds.update_overrides(guild_id, changes, actor=actor)
        self._gate.forget(guild_id)
        return f"<@{actor}> set " + ", ".join(said) + "."

    async def set_role_limit(
        self, guild_id: int, actor: int, role_id: int, *, daily: int | None, monthly: int | None = UNSET
    ) -> str:
        """A role's limits; a period left UNSET follows the guild's own limit for it."""
        _check_count(daily, "images per day")
        limit: dict[str, int | None] = {"daily": daily}
        month_text = "the server's monthly limit"
        if monthly is not UNSET:
            _check_count(monthly, "images per month")
            limit["monthly"] = monthly
            month_text = f"{_limit_text(monthly)} a month"
        await self._guilds.set_role_limit(guild_id, role_id, limit, actor=actor)  # one statement: see GuildStore
        self._gate.forget(guild_id)
        return f"<@{actor}> set <@&{role_id}> to {_limit_text(daily)} a day, {month_text}."

    async def clear_role_limit(self, guild_id: int, actor: int, role_id: int) -> str:
        if await self._guilds.clear_role_limit(guild_id, role_id, actor=actor) is None:
            raise InvalidInput("That role has no override.")
        self._gate.forget(guild_id)
        return f"<@{actor}> removed the override of <@&{role_id}>."

    # -- blocks ---------------------------------------------------------------------------------
    async def block(
        self, guild_id: int, actor: int, user_id: int, reason: str, duration: timedelta | None = None
    ) -> str:
        reason = _reason(reason)
        expires = iso(self._gate.now() + duration) if duration else None
        await self._guilds.block(guild_id, user_id, reason=reason, expires_at=expires, actor=actor)
        until = f" for {_duration_text(duration)}" if duration else ""
        return f"<@{actor}> blocked <@{user_id}>{until}: {reason}"

    async def unblock(self, guild_id: int, actor: int, user_id: int) -> str:
        if not await self._guilds.unblock(guild_id, user_id, actor=actor):
            raise InvalidInput("That user is not blocked.")
        return f"<@{actor}> unblocked <@{user_id}>."

    async def blocks(self, guild_id: int) -> list[Block]:
        return await self._guilds.blocks(guild_id)

    # -- prompt rules ---------------------------------------------------------------------------
    async def add_rule(self, guild_id: int, actor: int, kind: RuleKind, pattern: str, reason: str) -> tuple[Rule, str]:
        # refuses invalid or catastrophically slow expressions (the vetting runs probes: off the loop)
        await asyncio.to_thread(compile_rule, kind, pattern)
        rule = await self._guilds.add_rule(guild_id, kind, pattern.strip(), _reason(reason), actor=actor)
        self._gate.forget(guild_id)
        return rule, f"<@{actor}> added rule #{rule.id} ({kind} `{rule.pattern}`): {rule.reason}"

    async def remove_rule(self, guild_id: int, actor: int, rule_id: int) -> str:
        if not await self._guilds.remove_rule(guild_id, rule_id, actor=actor):
            raise InvalidInput(f"There is no rule #{rule_id} in this server.")
        self._gate.forget(guild_id)
        return f"<@{actor}> removed rule #{rule_id}."

    async def rules(self, guild_id: int) -> list[Rule]:
        return await self._guilds.rules(guild_id)

    # -- channels and the log -------------------------------------------------------------------
    async def allow_channel(self, guild_id: int, actor: int, channel_id: int, allowed: bool) -> str:
        channels = await self._guilds.allow_channel(guild_id, channel_id, allowed, actor=actor)  # one statement
        self._gate.forget(guild_id)
        verb = "allowed" if allowed else "disallowed"
        scope = "only the allowed channels" if channels else "every channel"
        return f"<@{actor}> {verb} <#{channel_id}>; images can now be made in {scope}."

    async def set_log_channel(self, guild_id: int, actor: int, channel_id: int | None) -> str:
        if channel_id is None:
            await self._guilds.update_overrides(guild_id, {}, actor=actor, remove=("log_channel_id",))
        else:
            await self._guilds.update_overrides(guild_id, {"log_channel_id": channel_id}, actor=actor)
        self._gate.forget(guild_id)
        return f"<@{actor}> " + (f"set the moderation log to <#{channel_id}>." if channel_id else "turned off the log.")

    async def set_cache(self, guild_id: int, actor: int, *, enabled: bool | None, counts: bool | None) -> str:
        changes: dict[str, Any] = {}
        if enabled is not None:
            changes["cache_enabled"] = enabled
        if counts is not None:
            changes["cache_counts_toward_limits"] = counts
        if not changes:
            raise InvalidInput("Nothing to change: give at least one option.")
        await self._guilds.update_overrides(guild_id, changes, actor=actor)
        self._gate.forget(guild_id)
        said = []
        if enabled is not None:
            said.append("turned the image cache " + ("on" if enabled else "off"))
        if counts is not None:
            said.append("made cached images " + ("count" if counts else "not count") + " toward image limits")
        return f"<@{actor}> " + " and ".join(said) + "."

    # -- usage ----------------------------------------------------------------------------------
    async def reset_today(self, guild_id: int, actor: int, user_id: int) -> str:
        policy = await self._gate.policy(guild_id)
        day = periods(self._gate.now(), policy.timezone).day
        await self._store.write(
            "UPDATE quota_counters SET used = 0 WHERE scope = 'user_day' AND subject = ? AND period = ?",
            (f"{guild_id}:{user_id}", day),
        )
        await self._guilds.audit(guild_id, actor, "reset_today", {"user": user_id, "day": day})
        return f"<@{actor}> reset today's image count of <@{user_id}>."

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
        raise InvalidInput(f"The {label} must be between 0 and 100000 (or unlimited).")


def _reason(reason: str) -> str:
    reason = " ".join(reason.split())
    if not reason:
        raise InvalidInput("Give a reason: the user is told it.")
    return reason[:REASON_MAX_CHARS]


def _duration_text(duration: timedelta) -> str:
    hours = duration.total_seconds() / 3600
    return f"{hours / 24:g} day(s)" if hours >= 24 else f"{hours:g} hour(s)"
