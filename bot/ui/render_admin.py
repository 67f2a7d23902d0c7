"""Embeds for /usage and the /imagine-admin commands (limits, rules, blocks, reports, status), per locale."""

from __future__ import annotations

import math
from datetime import datetime

import discord

from bot.gatekeeper import Usage
from bot.i18n import DEFAULT, money, number, t, when
from bot.limits import GuildPolicy, discord_time
from bot.moderation import Rule
from bot.money import format_cny
from bot.status import GuildStatus
from bot.storage.guilds import Block
from bot.storage.reports import GuildReport
from bot.ui.render import COLOUR


def _count(used: int, limit: int | None, locale: str) -> str:
    if limit is None:
        return t(locale, "usage.count_unlimited", used=number(locale, used))
    left = number(locale, max(0, limit - used))
    return t(locale, "usage.count", used=number(locale, used), limit=number(locale, limit), left=left)


def _money(fen: int | None, locale: str) -> str:
    return t(locale, "common.unlimited") if fen is None else money(locale, fen)


def _money_left(used: int, budget: int | None, locale: str) -> str:
    if budget is None:
        return t(locale, "usage.spent_no_cap", spent=money(locale, used))
    return t(locale, "usage.budget_left", left=money(locale, max(0, budget - used)), budget=money(locale, budget))


def usage_embed(usage: Usage, locale: str = DEFAULT) -> discord.Embed:
    day, month = discord_time(usage.periods.day_resets_at), discord_time(usage.periods.month_resets_at)
    embed = discord.Embed(title=t(locale, "usage.title"), colour=COLOUR)
    today = _count(usage.today, usage.daily_limit, locale)
    embed.add_field(name=t(locale, "usage.today"), value=t(locale, "usage.resets", count=today, when=day), inline=False)
    this_month = _count(usage.month, usage.monthly_limit, locale)
    embed.add_field(
        name=t(locale, "usage.this_month"), value=t(locale, "usage.resets", count=this_month, when=month), inline=False
    )
    embed.add_field(
        name=t(locale, "usage.budget_today"), value=_money_left(usage.guild_today_fen, usage.daily_budget_fen, locale)
    )
    embed.add_field(
        name=t(locale, "usage.budget_month"),
        value=_money_left(usage.guild_month_fen, usage.monthly_budget_fen, locale),
    )
    return embed


def _n(value: int | None, locale: str) -> str:
    return t(locale, "common.unlimited") if value is None else number(locale, value)


def limits_embed(policy: GuildPolicy, locale: str = DEFAULT) -> discord.Embed:
    embed = discord.Embed(title=t(locale, "limits.title"), colour=COLOUR)
    daily, monthly = _n(policy.user_daily_limit, locale), _n(policy.user_monthly_limit, locale)
    embed.add_field(
        name=t(locale, "limits.images"), value=t(locale, "limits.per_day_month", daily=daily, monthly=monthly)
    )
    embed.add_field(name=t(locale, "limits.cooldown"), value=t(locale, "embed.seconds", seconds=policy.cooldown_s))
    budget = t(
        locale,
        "limits.per_day_month",
        daily=_money(policy.daily_budget_fen, locale),
        monthly=_money(policy.monthly_budget_fen, locale),
    )
    embed.add_field(name=t(locale, "limits.budget"), value=budget)
    embed.add_field(name=t(locale, "limits.timezone"), value=policy.timezone)
    roles = [
        f"<@&{role}>: "
        + t(locale, "limits.per_day_month", daily=_n(limit.daily, locale), monthly=_n(limit.monthly, locale))
        for role, limit in sorted(policy.role_limits.items())
    ]
    embed.add_field(name=t(locale, "limits.roles"), value="\n".join(roles) or t(locale, "common.none"), inline=False)
    channels = ", ".join(f"<#{c}>" for c in sorted(policy.allowed_channels)) or t(locale, "admin.scope_every")
    embed.add_field(name=t(locale, "limits.channels"), value=channels, inline=False)
    log = f"<#{policy.log_channel_id}>" if policy.log_channel_id else t(locale, "common.off")
    embed.add_field(name=t(locale, "limits.log"), value=log)
    return embed


def rules_embed(rules: list[Rule], locale: str = DEFAULT) -> discord.Embed:
    lines = [f"#{r.id} {r.kind} `{r.pattern}` — {r.reason}" for r in rules]
    description = "\n".join(lines)[:4000] or t(locale, "rules.none")
    return discord.Embed(title=t(locale, "rules.title"), description=description, colour=COLOUR)


def blocks_embed(blocks: list[Block], locale: str = DEFAULT, timezone: str = "UTC") -> discord.Embed:
    lines = [
        t(locale, "blocks.line", user=b.user_id, until=_until(b.expires_at, locale, timezone), reason=b.reason)
        for b in blocks
    ]
    description = "\n".join(lines)[:4000] or t(locale, "blocks.none")
    return discord.Embed(title=t(locale, "blocks.title"), description=description, colour=COLOUR)


def _until(expires_at: str | None, locale: str, timezone: str) -> str:
    """When a block ends, written the reader's way in the server's time zone (the zone its days follow)."""
    if not expires_at:
        return t(locale, "blocks.until_unblocked")
    return when(locale, datetime.fromisoformat(expires_at), timezone)


def report_embed(report: GuildReport, days: int, locale: str = DEFAULT, timezone: str = "UTC") -> discord.Embed:
    embed = discord.Embed(title=t(locale, "report.title", days=number(locale, days)), colour=COLOUR)
    since, until = (when(locale, datetime.fromisoformat(moment), timezone) for moment in (report.since, report.until))
    embed.add_field(name=t(locale, "report.period"), value=f"{since} – {until}", inline=False)
    embed.add_field(name=t(locale, "report.images"), value=number(locale, report.images))
    embed.add_field(name=t(locale, "report.spent"), value=money(locale, report.cost_fen))
    embed.add_field(name=t(locale, "report.billed"), value=money(locale, report.upstream_fen))
    embed.add_field(name=t(locale, "report.failures"), value=number(locale, report.failures))
    top = [
        f"<@{u.user_id}>: "
        + t(locale, "report.user_line", images=number(locale, u.images), spent=money(locale, u.cost_fen))
        + (t(locale, "report.user_failed", failures=number(locale, u.failures)) if u.failures else "")
        + (t(locale, "report.user_refused", refusals=number(locale, u.content_refusals)) if u.content_refusals else "")
        for u in report.top_users
    ]
    embed.add_field(
        name=t(locale, "report.top_users"), value="\n".join(top)[:1024] or t(locale, "report.nobody"), inline=False
    )
    refusals = ", ".join(f"{reason}: {n}" for reason, n in sorted(report.refusals.items()))
    embed.add_field(name=t(locale, "report.refused"), value=refusals or t(locale, "common.none"), inline=False)
    failures = ", ".join(f"{code}: {n}" for code, n in sorted(report.failure_codes.items()))
    embed.add_field(name=t(locale, "report.failure_causes"), value=failures or t(locale, "common.none"), inline=False)
    return embed


SHARED_FOOTER = "Queue and spend: every bot process (shared database). Uptime and upstream: this process only."
LOCAL_FOOTER = "Uptime and upstream: this bot process."


def status_embed(status: GuildStatus, shards: str) -> discord.Embed:
    """`shards`: which shards this process runs, and this server's (the Discord side knows them)."""
    embed = discord.Embed(title="imagine-bot status", colour=COLOUR)
    embed.add_field(
        name="Uptime",
        value=f"{duration(status.uptime_s)} (since {discord_time(status.started_at, 'f')})\n{shards}",
        inline=False,
    )
    queue = status.queue
    oldest = "nobody waiting" if queue.oldest_wait_s is None else f"oldest waiting {duration(queue.oldest_wait_s)}"
    embed.add_field(
        name="This server's queue",
        value=(
            f"{queue.waiting} waiting (at most {queue.queue_max}), {queue.running} generating or delivering\n"
            f"{oldest}\n"
            f"a new request would start in {duration(queue.new_request_wait_s)}"
        ),
        inline=False,
    )
    up = status.upstream
    pause = f"{math.ceil(up.pause_remaining_s)} s left" if up.pause_remaining_s > 0 else "no"
    embed.add_field(
        name="Upstream",
        value=(
            f"errors: {up.last_hour.error} in the last hour, {up.last_day.error} in 24 h\n"
            f"429s: {up.last_hour.rate_limited} in the last hour, {up.last_day.rate_limited} in 24 h\n"
            f"answered: {up.last_hour.ok} in the last hour, {up.last_day.ok} in 24 h"
            f" ({up.last_day.refused} refused as bad requests in 24 h)\n"
            f"paused: {pause}\n"
            f"in flight: {up.in_flight} of {up.concurrency}\n"
            f"started in the last minute: {up.starts_last_minute} of {up.rpm}"
        ),
        inline=False,
    )
    spend = status.spend
    spent = _money_left(spend.today_fen, spend.daily_budget_fen, DEFAULT)  # "spent, no cap" without a budget
    if spend.daily_budget_fen is not None:
        spent = f"{format_cny(spend.today_fen)} spent, {spent}"
    embed.add_field(
        name="Spent here today",
        value=(
            f"{spent} (images reserved by waiting jobs included)\n"
            f"the day ends {discord_time(spend.resets_at)} ({spend.timezone})"
        ),
        inline=False,
    )
    embed.set_footer(text=SHARED_FOOTER if status.shared_queue else LOCAL_FOOTER)
    return embed


def duration(seconds: float) -> str:
    """12 s, 4 min 5 s, 3 h 12 min, 2 d 5 h: the two largest units."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
