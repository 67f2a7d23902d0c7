"""Everything that may refuse a request before money is spent, except the queue itself.

In order: a block on the user, the guild's allowed channels, the guild's prompt rules, then the
money and image limits (cooldown, images per day/month by role, the guild's daily/monthly
budget). The limits are not checked here but *reserved*: `charges()` lists the counters, and
the job store applies them in the same transaction that writes the job (see
`bot/storage/quotas.py`), so concurrent requests can never slip past a limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from bot.config import Settings
from bot.errors import LimitReached
from bot.i18n import Number, Text, items
from bot.limits import GuildPolicy, Periods, discord_time, member_limits, periods
from bot.moderation import RuleMatch, RuleSet
from bot.storage.guilds import GuildStore
from bot.storage.quotas import Charge, QuotaExceeded

_T = TypeVar("_T")


class Refused(LimitReached):
    """A moderation refusal (block, channel, rule): `public` is what the user is told."""


@dataclass(frozen=True, slots=True)
class Usage:
    """What /usage shows: the caller's images and the guild's money, in the current periods."""

    today: int
    daily_limit: int | None
    month: int
    monthly_limit: int | None
    guild_today_fen: int
    daily_budget_fen: int | None
    guild_month_fen: int
    monthly_budget_fen: int | None
    periods: Periods


def default_policy(settings: Settings) -> GuildPolicy:
    return GuildPolicy(
        user_daily_limit=settings.user_daily_limit,
        user_monthly_limit=settings.user_monthly_limit,
        cooldown_s=settings.cooldown_seconds,
        daily_budget_fen=settings.guild_daily_budget_fen,
        monthly_budget_fen=settings.guild_monthly_budget_fen,
        timezone=settings.default_timezone,
    )


class Gatekeeper:
    def __init__(
        self,
        settings: Settings,
        guilds: GuildStore,
        *,
        utcnow: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self.guilds = guilds
        self._utcnow = utcnow
        self._defaults = default_policy(settings)
        self._policies: dict[int, GuildPolicy] = {}
        self._rules: dict[int, RuleSet] = {}
        self._generations: dict[int, int] = {}  # bumped by forget(): see _cached

    # -- cached per-guild state (dropped whenever an admin changes it) --------------------------
    # A load awaits the store (and compiles rules in a thread); an admin change can land meanwhile.
    # forget() bumps the guild's generation, and a load keeps its result only if the generation
    # did not move while it ran: otherwise it reloads, so a change is never hidden by a stale load.
    async def policy(self, guild_id: int) -> GuildPolicy:
        return await self._cached(self._policies, guild_id, self._load_policy)

    async def rules(self, guild_id: int) -> RuleSet:
        return await self._cached(self._rules, guild_id, self._load_rules)

    def forget(self, guild_id: int) -> None:
        self._generations[guild_id] = self._generations.get(guild_id, 0) + 1
        self._policies.pop(guild_id, None)
        self._rules.pop(guild_id, None)

    async def _load_policy(self, guild_id: int) -> GuildPolicy:
        return self._defaults.with_overrides(await self.guilds.overrides(guild_id))

    async def _load_rules(self, guild_id: int) -> RuleSet:
        rules = await self.guilds.rules(guild_id)
        return await asyncio.to_thread(RuleSet, rules)  # compiling is CPU work

    async def _cached(
        self, cache: dict[int, _T], guild_id: int, load: Callable[[int], Awaitable[_T]], *, attempts: int = 5
    ) -> _T:
        for _ in range(attempts):
            if guild_id in cache:
                return cache[guild_id]
            generation = self._generations.get(guild_id, 0)
            value = await load(guild_id)
            if self._generations.get(guild_id, 0) == generation:
                cache[guild_id] = value
                return value
        # changed during every attempt: use the newest load without caching it (the next call reloads)
        return value

    # -- screening ------------------------------------------------------------------------------
    async def screen(
        self, guild_id: int, user_id: int, channel_id: int | None, fields: Mapping[str, str | None]
    ) -> None:
        """Blocks, channels and prompt rules; raises Refused with the public reason."""
        block = await self.guilds.active_block(guild_id, user_id)
        if block is not None:
            if block.expires_at:
                until = discord_time(datetime.fromisoformat(block.expires_at), "f")
                raise Refused(Text("refusal.blocked_until", until=until, reason=block.reason), limit="blocked")
            raise Refused(Text("refusal.blocked", reason=block.reason), limit="blocked")
        policy = await self.policy(guild_id)
        if not policy.channel_allowed(channel_id):
            channels = items(f"<#{c}>" for c in sorted(policy.allowed_channels))
            raise Refused(Text("refusal.channel", channels=channels), limit="channel")
        rules = await self.rules(guild_id)
        if len(rules):
            match = await asyncio.to_thread(rules.check, fields)  # bounded regex work, off the loop
            if match is not None:
                raise RuleRefusal(match)

    async def presentation(self, guild_id: int, channel_id: int | None, *, private: bool, spoiler: bool) -> bool:
        """How the result may be shown: refuses a private request where the server forbids it
        (Refused, before any charge); returns whether the image is a spoiler (asked, or the channel's rule)."""
        policy = await self.policy(guild_id)
        if private and not policy.private_allowed:
            raise Refused(Text("refusal.private_forbidden"), limit="private")
        return spoiler or channel_id in policy.spoiler_channels

    # -- limits -----------------------------------------------------------------------------------
    async def charges(self, guild_id: int, user_id: int, role_ids: tuple[int, ...]) -> tuple[list[Charge], int]:
        """The counters one image must fit in (with limits), and the cooldown in ms."""
        policy = await self.policy(guild_id)
        now = self._utcnow()
        current = periods(now, policy.timezone)
        daily, monthly = member_limits(policy, role_ids)
        price = self._settings.price_per_image_fen
        member, guild = f"{guild_id}:{user_id}", str(guild_id)
        charges = [
            Charge("user_day", member, current.day, 1, daily),
            Charge("user_month", member, current.month, 1, monthly),
            Charge("guild_day_fen", guild, current.day, price, policy.daily_budget_fen),
            Charge("guild_month_fen", guild, current.month, price, policy.monthly_budget_fen),
        ]
        return charges, policy.cooldown_s * 1000

    async def explain(self, guild_id: int, exc: QuotaExceeded) -> LimitReached:
        """The sentence for a limit that refused: which one, and when it resets."""
        policy = await self.policy(guild_id)
        current = periods(self._utcnow(), policy.timezone)
        charge = exc.charge
        resets = current.day_resets_at if "_day" in charge.scope else current.month_resets_at
        # a Discord timestamp: each reader's client shows it in their own language and time zone
        text = Text(f"refusal.{charge.scope}", limit=Number(charge.limit or 0), resets=discord_time(resets))
        return LimitReached(text, limit=charge.scope, resets_at=resets)

    def cooldown_refusal(self, last_ms: int, cooldown_ms: int) -> LimitReached:
        ready = datetime.fromtimestamp((last_ms + cooldown_ms) / 1000, UTC)
        return LimitReached(
            Text("refusal.cooldown", seconds=Number(cooldown_ms // 1000), ready=discord_time(ready)),
            limit="cooldown",
            resets_at=ready,
        )

    def now(self) -> datetime:
        return self._utcnow()

    def now_ms(self) -> int:
        return int(self._utcnow().timestamp() * 1000)

    async def usage(self, guild_id: int, user_id: int, role_ids: tuple[int, ...], counters: Mapping[str, int]) -> Usage:
        policy = await self.policy(guild_id)
        daily, monthly = member_limits(policy, role_ids)
        return Usage(
            today=counters.get("user_day", 0),
            daily_limit=daily,
            month=counters.get("user_month", 0),
            monthly_limit=monthly,
            guild_today_fen=counters.get("guild_day_fen", 0),
            daily_budget_fen=policy.daily_budget_fen,
            guild_month_fen=counters.get("guild_month_fen", 0),
            monthly_budget_fen=policy.monthly_budget_fen,
            periods=periods(self._utcnow(), policy.timezone),
        )


class RuleRefusal(Refused):
    def __init__(self, match: RuleMatch) -> None:
        reason = match.rule.reason or Text("refusal.rule_default")
        super().__init__(Text("refusal.rule", reason=reason), limit="rule")
        self.match = match
