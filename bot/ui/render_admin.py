"""Embeds for /usage and the /imagine-admin commands (limits, rules, blocks, reports, status), per locale."""

from __future__ import annotations

import math
from datetime import datetime

import discord

from bot.gatekeeper import Usage
from bot.i18n import DEFAULT, money, number, t, when
from bot.limits import GuildPolicy, discord_time
from bot.moderation import Rule
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
    private = t(locale, "common.on" if policy.private_allowed else "common.off")
    embed.add_field(name=t(locale, "limits.private"), value=private)
    spoilers = ", ".join(f"<#{c}>" for c in sorted(policy.spoiler_channels)) or t(locale, "common.none")
    embed.add_field(name=t(locale, "limits.spoilers"), value=spoilers, inline=False)
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


def status_embed(status: GuildStatus, shards: str, locale: str = DEFAULT) -> discord.Embed:
    """`shards`: which shards this process runs, and this server's (the Discord side knows them)."""
    embed = discord.Embed(title=t(locale, "status.title"), colour=COLOUR)
    since = discord_time(status.started_at, "f")
    embed.add_field(
        name=t(locale, "status.uptime"),
        value=t(locale, "status.uptime_value", duration=duration(status.uptime_s, locale), since=since, shards=shards),
        inline=False,
    )
    queue = status.queue
    oldest = (
        t(locale, "status.nobody_waiting")
        if queue.oldest_wait_s is None
        else t(locale, "status.oldest_wait", duration=duration(queue.oldest_wait_s, locale))
    )
    embed.add_field(
        name=t(locale, "status.queue"),
        value=t(
            locale,
            "status.queue_value",
            waiting=number(locale, queue.waiting),
            max=number(locale, queue.queue_max),
            running=number(locale, queue.running),
            oldest=oldest,
            wait=duration(queue.new_request_wait_s, locale),
        ),
        inline=False,
    )
    up = status.upstream
    pause = (
        t(locale, "status.pause_left", seconds=math.ceil(up.pause_remaining_s))
        if up.pause_remaining_s > 0
        else t(locale, "status.no_pause")
    )
    embed.add_field(
        name=t(locale, "status.upstream"),
        value=t(
            locale,
            "status.upstream_value",
            errors_hour=up.last_hour.error,
            errors_day=up.last_day.error,
            limited_hour=up.last_hour.rate_limited,
            limited_day=up.last_day.rate_limited,
            ok_hour=up.last_hour.ok,
            ok_day=up.last_day.ok,
            refused_day=up.last_day.refused,
            pause=pause,
            in_flight=up.in_flight,
            concurrency=up.concurrency,
            starts=up.starts_last_minute,
            rpm=up.rpm,
        ),
        inline=False,
    )
    spend = status.spend
    spent = _money_left(spend.today_fen, spend.daily_budget_fen, locale)  # "spent, no cap" without a budget
    if spend.daily_budget_fen is not None:
        spent = t(locale, "status.spent_of_budget", spent=money(locale, spend.today_fen), left=spent)
    embed.add_field(
        name=t(locale, "status.spend"),
        value=t(
            locale, "status.spend_value", spent=spent, resets=discord_time(spend.resets_at), timezone=spend.timezone
        ),
        inline=False,
    )
    embed.set_footer(text=t(locale, "status.footer_shared" if status.shared_queue else "status.footer_local"))
    return embed


def duration(seconds: float, locale: str = DEFAULT) -> str:
    """12 s, 4 min 5 s, 3 h 12 min, 2 d 5 h: the two largest units."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return t(locale, "duration.days", days=days, hours=hours)
    if hours:
        return t(locale, "duration.hours", hours=hours, minutes=minutes)
    if minutes:
        return t(locale, "duration.minutes", minutes=minutes, seconds=secs)
    return t(locale, "duration.seconds", seconds=secs)
