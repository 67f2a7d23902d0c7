"""Embeds for /usage and the /imagine-admin commands (limits, rules, blocks, reports, status)."""

from __future__ import annotations

import math

import discord

from bot.gatekeeper import Usage
from bot.limits import GuildPolicy, discord_time
from bot.moderation import Rule
from bot.money import format_cny
from bot.status import GuildStatus
from bot.storage.guilds import Block
from bot.storage.reports import GuildReport
from bot.ui.render import COLOUR


def _count(used: int, limit: int | None) -> str:
    return f"{used} of unlimited" if limit is None else f"{used} of {limit} ({max(0, limit - used)} left)"


def _money(fen: int | None) -> str:
    return "unlimited" if fen is None else format_cny(fen)


def _money_left(used: int, budget: int | None) -> str:
    if budget is None:
        return f"{format_cny(used)} spent, no cap"
    return f"{format_cny(max(0, budget - used))} left of {format_cny(budget)}"


def usage_embed(usage: Usage) -> discord.Embed:
    day, month = discord_time(usage.periods.day_resets_at), discord_time(usage.periods.month_resets_at)
    embed = discord.Embed(title="Your image usage", colour=COLOUR)
    embed.add_field(name="Today", value=f"{_count(usage.today, usage.daily_limit)}\nresets {day}", inline=False)
    embed.add_field(
        name="This month", value=f"{_count(usage.month, usage.monthly_limit)}\nresets {month}", inline=False
    )
    embed.add_field(name="Server budget today", value=_money_left(usage.guild_today_fen, usage.daily_budget_fen))
    embed.add_field(name="Server budget this month", value=_money_left(usage.guild_month_fen, usage.monthly_budget_fen))
    return embed


def limits_embed(policy: GuildPolicy) -> discord.Embed:
    embed = discord.Embed(title="Limits in this server", colour=COLOUR)
    daily = "unlimited" if policy.user_daily_limit is None else str(policy.user_daily_limit)
    monthly = "unlimited" if policy.user_monthly_limit is None else str(policy.user_monthly_limit)
    embed.add_field(name="Images per user", value=f"{daily} a day, {monthly} a month")
    embed.add_field(name="Cooldown", value=f"{policy.cooldown_s} s")
    embed.add_field(
        name="Budget",
        value=f"{_money(policy.daily_budget_fen)} a day, {_money(policy.monthly_budget_fen)} a month",
    )
    embed.add_field(name="Time zone", value=policy.timezone)
    roles = [
        f"<@&{role}>: {_n(limit.daily)} a day, {_n(limit.monthly)} a month"
        for role, limit in sorted(policy.role_limits.items())
    ]
    embed.add_field(name="Role overrides (most generous wins)", value="\n".join(roles) or "none", inline=False)
    channels = ", ".join(f"<#{c}>" for c in sorted(policy.allowed_channels)) or "every channel"
    embed.add_field(name="Allowed channels", value=channels, inline=False)
    embed.add_field(name="Moderation log", value=f"<#{policy.log_channel_id}>" if policy.log_channel_id else "off")
    return embed


def _n(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def rules_embed(rules: list[Rule]) -> discord.Embed:
    lines = [f"#{r.id} {r.kind} `{r.pattern}` — {r.reason}" for r in rules]
    return discord.Embed(title="Prompt rules", description="\n".join(lines)[:4000] or "No rules.", colour=COLOUR)


def blocks_embed(blocks: list[Block]) -> discord.Embed:
    lines = [f"<@{b.user_id}> until {b.expires_at or 'unblocked'}: {b.reason}" for b in blocks]
    return discord.Embed(title="Blocked users", description="\n".join(lines)[:4000] or "Nobody.", colour=COLOUR)


def report_embed(report: GuildReport, days: int) -> discord.Embed:
    embed = discord.Embed(title=f"Report: the last {days} day(s)", colour=COLOUR)
    embed.add_field(name="Images", value=str(report.images))
    embed.add_field(name="Spent", value=format_cny(report.cost_fen))
    embed.add_field(name="Billed upstream", value=format_cny(report.upstream_fen))
    embed.add_field(name="Failures", value=str(report.failures))
    top = [
        f"<@{u.user_id}>: {u.images} image(s), {format_cny(u.cost_fen)}"
        + (f", {u.failures} failed" if u.failures else "")
        + (f", {u.content_refusals} refused by the provider" if u.content_refusals else "")
        for u in report.top_users
    ]
    embed.add_field(name="Top users", value="\n".join(top)[:1024] or "nobody", inline=False)
    refusals = ", ".join(f"{reason}: {n}" for reason, n in sorted(report.refusals.items()))
    embed.add_field(name="Refused requests", value=refusals or "none", inline=False)
    failures = ", ".join(f"{code}: {n}" for code, n in sorted(report.failure_codes.items()))
    embed.add_field(name="Failures by cause", value=failures or "none", inline=False)
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
    spent = _money_left(spend.today_fen, spend.daily_budget_fen)  # "spent, no cap" without a budget
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
