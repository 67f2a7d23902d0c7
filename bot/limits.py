"""Pure policy: a guild's effective limits, a member's quota, and the periods they count in.

No I/O here. The store applies the counters atomically (`bot/storage/quotas.py`); this module
only decides *which* counters a request must fit in, with which limits, until when.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.errors import InvalidInput
from bot.i18n import Text


@dataclass(frozen=True, slots=True)
class RoleLimit:
    """A role's override; None means unlimited for that period."""

    daily: int | None
    monthly: int | None = None


@dataclass(frozen=True, slots=True)
class GuildPolicy:
    """A guild's effective settings: the operator's defaults with the guild's own changes on top."""

    user_daily_limit: int | None
    user_monthly_limit: int | None
    cooldown_s: int
    daily_budget_fen: int | None
    monthly_budget_fen: int | None
    timezone: str = "UTC"
    role_limits: Mapping[int, RoleLimit] = field(default_factory=dict)
    allowed_channels: frozenset[int] = frozenset()
    log_channel_id: int | None = None
    cache_enabled: bool = True
    cache_counts_toward_limits: bool = False
    private_allowed: bool = True  # whether members may ask for private (ephemeral) results
    spoiler_channels: frozenset[int] = frozenset()  # channels where every image is posted as a spoiler

    def with_overrides(self, overrides: Mapping[str, Any]) -> GuildPolicy:
        """Apply a guild's stored changes (JSON) over the defaults; unknown keys are ignored."""
        known = {f.name for f in fields(self)}
        values: dict[str, Any] = {k: v for k, v in overrides.items() if k in known}
        if "role_limits" in values:
            # a period a role does not set follows the guild's own limit for it
            daily = values.get("user_daily_limit", self.user_daily_limit)
            monthly = values.get("user_monthly_limit", self.user_monthly_limit)
            values["role_limits"] = {
                int(role): RoleLimit(daily=limit.get("daily", daily), monthly=limit.get("monthly", monthly))
                for role, limit in values["role_limits"].items()
            }
        if "allowed_channels" in values:
            values["allowed_channels"] = frozenset(int(c) for c in values["allowed_channels"])
        if "spoiler_channels" in values:
            values["spoiler_channels"] = frozenset(int(c) for c in values["spoiler_channels"])
        return replace(self, **values)

    def channel_allowed(self, channel_id: int | None) -> bool:
        return not self.allowed_channels or channel_id in self.allowed_channels


def member_limits(policy: GuildPolicy, role_ids: Iterable[int]) -> tuple[int | None, int | None]:
    """(daily, monthly) images for a member: the most generous of their roles' overrides.

    A member with no overridden role gets the guild's defaults. Overrides replace the default
    (so a role can also *lower* it, e.g. for newcomers); among several, the most generous wins,
    and unlimited (None) beats any number.
    """
    overrides = [policy.role_limits[r] for r in role_ids if r in policy.role_limits]
    if not overrides:
        return policy.user_daily_limit, policy.user_monthly_limit
    return _most_generous(o.daily for o in overrides), _most_generous(o.monthly for o in overrides)


def _most_generous(limits: Iterable[int | None]) -> int | None:
    values = list(limits)
    return None if any(v is None for v in values) else max(values)  # type: ignore[type-var]


@dataclass(frozen=True, slots=True)
class Periods:
    day: str  # "2026-11-25" in the guild's time zone
    month: str  # "2026-11"
    day_resets_at: datetime  # UTC
    month_resets_at: datetime


def periods(now: datetime, timezone: str) -> Periods:
    """The guild's current day and month, and when each rolls over (its local midnight)."""
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    midnight = datetime(local.year, local.month, local.day, tzinfo=zone)
    next_day = midnight + timedelta(days=1)  # aware arithmetic is wall-clock: DST-safe
    first = midnight.replace(day=1)
    next_month = (first + timedelta(days=32)).replace(day=1)
    return Periods(
        day=local.strftime("%Y-%m-%d"),
        month=local.strftime("%Y-%m"),
        day_resets_at=next_day.astimezone(UTC),
        month_resets_at=next_month.astimezone(UTC),
    )


def validate_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(Text("input.timezone_unknown", value=name), field="timezone") from None
    return name


def discord_time(moment: datetime, style: str = "R") -> str:
    """A Discord timestamp: every reader sees it in their own zone (R = "in 3 hours")."""
    return f"<t:{int(moment.timestamp())}:{style}>"
