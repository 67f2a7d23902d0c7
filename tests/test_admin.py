"""The admin API (bot/admin.py, GuildAdmin) against a real SQLite store with an injected UTC clock."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.admin import GuildAdmin, parse_cny, parse_count
from bot.config import Settings
from bot.errors import InvalidInput
from bot.gatekeeper import Gatekeeper
from bot.limits import RoleLimit
from bot.storage.connect import open_store
from bot.storage.db import Store, iso
from bot.storage.guilds import GuildStore
from bot.storage.jobs import JobStore, NewJob
from bot.storage.quotas import QuotaExceeded
from bot.storage.reports import UserSpend

pytestmark = pytest.mark.both_backends

GUILD, OTHER_GUILD, ADMIN = 1, 2, 900


class WallClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


class World:
    def __init__(self, store: Store, gate: Gatekeeper, clock: WallClock) -> None:
        self.store = store
        self.gate = gate
        self.clock = clock
        self.admin = GuildAdmin(store, gate)
        self.guilds: GuildStore = gate.guilds
        self.jobs = JobStore(store)

    async def audit_rows(self, guild_id: int = GUILD) -> list[tuple[str, str, str]]:
        rows = await self.store.fetch_all(
            "SELECT actor, action, at FROM audit_log WHERE guild_id = ? ORDER BY id", (guild_id,)
        )
        return [(r["actor"], r["action"], r["at"]) for r in rows]

    async def reserve(self, job_id: int, user_id: int, guild_id: int = GUILD) -> None:
        """Queue a job the way the service does: the job row and its quota in one transaction."""
        charges, _ = await self.gate.charges(guild_id, user_id, ())
        await self.jobs.insert(new_job(job_id, guild_id=guild_id, user_id=user_id), charges=charges)

    async def used(self, scope: str, subject: str, period: str) -> int:
        row = await self.store.fetch_one(
            "SELECT used FROM quota_counters WHERE scope = ? AND subject = ? AND period = ?", (scope, subject, period)
        )
        return int(row[0]) if row else 0


def new_job(job_id: int, *, guild_id: int = GUILD, user_id: int = 10, prompt: str | None = None) -> NewJob:
    return NewJob(
        id=job_id,
        requester=str(user_id),
        command="imagine",
        model="qwen-image-plus",
        prompt=prompt or f"prompt {job_id}",
        size="1328*1328",
        negative_prompt="",
        prompt_extend=True,
        watermark=True,
        style="photo",
        guild_id=guild_id,
        channel_id=5,
        user_id=user_id,
    )


@pytest.fixture
def clock() -> WallClock:
    return WallClock(utc(2026, 11, 25, 10, 0))


@pytest.fixture
async def world(make_settings: Callable[..., Settings], clock: WallClock) -> AsyncIterator[World]:
    settings = make_settings(user_daily_limit=3)
    store = await open_store(settings.database_url, clock=clock)
    try:
        yield World(store, Gatekeeper(settings, GuildStore(store), utcnow=clock), clock)
    finally:
        await store.close()


# -- parsing what admins type ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count"),
    [("20", 20), (" 7 ", 7), ("0", 0), ("unlimited", None), ("None", None), ("OFF", None)],
)
def test_parse_count_accepts_numbers_and_unlimited(text: str, count: int | None) -> None:
    assert parse_count(text) == count


@pytest.mark.parametrize(
    "text",
    [
        "-1",
        "",
        "ten",
        "2.5",
        pytest.param(
            "²",
        ),
    ],
)
def test_parse_count_refuses_anything_else_with_invalid_input(text: str) -> None:
    with pytest.raises(InvalidInput, match="not a number of images"):
        parse_count(text)


@pytest.mark.parametrize(
    ("text", "fen"),
    [("12.5", 1250), ("0.36", 36), ("¥3", 300), (" 10 ", 1000), ("0", 0), ("none", None), ("Unlimited", None)],
)
def test_parse_cny_gives_fen_or_none(text: str, fen: int | None) -> None:
    assert parse_cny(text) == fen


@pytest.mark.parametrize(
    "text",
    [
        "-1",
        "1.234",
        "ten yuan",
        *(
            pytest.param(
                value,
            )
            for value in ("inf", "NaN")
        ),
    ],
)
def test_parse_cny_refuses_anything_else_with_invalid_input(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_cny(text)


# -- limits ------------------------------------------------------------------------------------------


async def test_set_limits_changes_the_policy_at_once(world: World) -> None:
    assert (await world.admin.policy(GUILD)).user_daily_limit == 3  # cached before the change
    text = await world.admin.set_limits(
        GUILD, ADMIN, daily=10, monthly=None, cooldown_s=5, daily_budget_fen=500, timezone="Asia/Shanghai"
    )
    assert text == (
        "<@900> set images per user per day to 10, images per user per month to unlimited, cooldown to 5 s, "
        "daily budget to ¥5.00, time zone to Asia/Shanghai."
    )
    policy = await world.admin.policy(GUILD)
    assert (policy.user_daily_limit, policy.user_monthly_limit, policy.cooldown_s) == (10, None, 5)
    assert (policy.daily_budget_fen, policy.timezone) == (500, "Asia/Shanghai")
    assert (await world.admin.policy(OTHER_GUILD)).user_daily_limit == 3  # other guilds keep the defaults


async def test_set_limits_keeps_earlier_changes(world: World) -> None:
    await world.admin.set_limits(GUILD, ADMIN, daily=10)
    await world.admin.set_limits(GUILD, ADMIN, monthly_budget_fen=None)
    policy = await world.admin.policy(GUILD)
    assert (policy.user_daily_limit, policy.monthly_budget_fen) == (10, None)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"daily": -1}, "between 0 and 100000"),
        ({"monthly": 100_001}, "between 0 and 100000"),
        ({"cooldown_s": -1}, "between 0 and 86400"),
        ({"cooldown_s": 86_401}, "between 0 and 86400"),
        ({"daily": 5, "timezone": "Mars/Olympus_Mons"}, "Unknown time zone 'Mars/Olympus_Mons'"),
        ({"daily": 5, "cooldown_s": -5}, "between 0 and 86400"),
        ({}, "Nothing to change"),
    ],
)
async def test_set_limits_refuses_invalid_values_and_changes_nothing(
    world: World, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        await world.admin.set_limits(GUILD, ADMIN, **changes)
    assert await world.guilds.overrides(GUILD) == {}
    assert await world.audit_rows() == []


async def test_role_limits_are_set_and_cleared(world: World) -> None:
    text = await world.admin.set_role_limit(GUILD, ADMIN, 777, daily=50, monthly=None)
    assert text == "<@900> set <@&777> to 50 image(s) a day, unlimited a month."
    await world.admin.set_role_limit(GUILD, ADMIN, 778, daily=1, monthly=5)
    policy = await world.admin.policy(GUILD)
    assert dict(policy.role_limits) == {777: RoleLimit(50, None), 778: RoleLimit(1, 5)}

    assert await world.admin.clear_role_limit(GUILD, ADMIN, 777) == "<@900> removed the override of <@&777>."
    assert dict((await world.admin.policy(GUILD)).role_limits) == {778: RoleLimit(1, 5)}


async def test_a_role_limit_is_replaced_not_duplicated(world: World) -> None:
    await world.admin.set_role_limit(GUILD, ADMIN, 777, daily=50, monthly=None)
    await world.admin.set_role_limit(GUILD, ADMIN, 777, daily=2, monthly=2)
    assert dict((await world.admin.policy(GUILD)).role_limits) == {777: RoleLimit(2, 2)}


async def test_clearing_a_role_without_an_override_is_refused(world: World) -> None:
    with pytest.raises(InvalidInput, match="no override"):
        await world.admin.clear_role_limit(GUILD, ADMIN, 777)
    assert await world.audit_rows() == []


async def test_a_role_limit_out_of_range_is_refused(world: World) -> None:
    with pytest.raises(InvalidInput):
        await world.admin.set_role_limit(GUILD, ADMIN, 777, daily=-3, monthly=None)
    assert await world.guilds.overrides(GUILD) == {}


# -- blocks ------------------------------------------------------------------------------------------


async def test_a_block_with_a_duration_expires_on_the_injected_clock(world: World, clock: WallClock) -> None:
    text = await world.admin.block(GUILD, ADMIN, 10, "  spamming \n the channel ", timedelta(hours=6))
    assert text == "<@900> blocked <@10> for 6 hour(s): spamming the channel"
    blocks = await world.admin.blocks(GUILD)
    assert [(b.user_id, b.reason, b.expires_at, b.created_by) for b in blocks] == [
        (10, "spamming the channel", iso(utc(2026, 11, 25, 16)), ADMIN)
    ]
    assert await world.guilds.active_block(GUILD, 10) is not None
    assert await world.guilds.active_block(OTHER_GUILD, 10) is None

    clock.advance(hours=5, minutes=59)
    assert await world.guilds.active_block(GUILD, 10) is not None
    clock.advance(minutes=1)
    assert await world.guilds.active_block(GUILD, 10) is None
    assert await world.admin.blocks(GUILD) == []


async def test_a_block_in_days_says_days_and_one_without_duration_never_expires(world: World, clock: WallClock) -> None:
    assert await world.admin.block(GUILD, ADMIN, 10, "abuse", timedelta(days=2)) == (
        "<@900> blocked <@10> for 2 day(s): abuse"
    )
    assert await world.admin.block(GUILD, ADMIN, 11, "abuse") == "<@900> blocked <@11>: abuse"
    clock.advance(days=400)
    assert [b.user_id for b in await world.admin.blocks(GUILD)] == [11]


async def test_a_block_needs_a_reason(world: World) -> None:
    with pytest.raises(InvalidInput, match="reason"):
        await world.admin.block(GUILD, ADMIN, 10, "   ")
    assert await world.admin.blocks(GUILD) == []


async def test_unblock_lifts_a_block(world: World) -> None:
    await world.admin.block(GUILD, ADMIN, 10, "abuse")
    assert await world.admin.unblock(GUILD, ADMIN, 10) == "<@900> unblocked <@10>."
    assert await world.guilds.active_block(GUILD, 10) is None


async def test_unblocking_a_user_who_is_not_blocked_is_refused(world: World) -> None:
    await world.admin.block(OTHER_GUILD, ADMIN, 10, "abuse")
    with pytest.raises(InvalidInput, match="not blocked"):
        await world.admin.unblock(GUILD, ADMIN, 10)
    assert await world.audit_rows() == []
    assert await world.guilds.active_block(OTHER_GUILD, 10) is not None


async def test_unblocking_a_user_whose_block_has_expired_is_refused(world: World, clock: WallClock) -> None:
    await world.admin.block(GUILD, ADMIN, 10, "abuse", timedelta(hours=1))
    clock.advance(hours=2)
    assert await world.admin.blocks(GUILD) == []  # the admins are shown nobody blocked
    with pytest.raises(InvalidInput, match="not blocked"):
        await world.admin.unblock(GUILD, ADMIN, 10)


# -- rules -------------------------------------------------------------------------------------------


async def test_add_rule_stores_it_and_the_screen_uses_it_at_once(world: World) -> None:
    assert len(await world.gate.rules(GUILD)) == 0  # cached empty before the change
    rule, text = await world.admin.add_rule(GUILD, ADMIN, "regex", r"  \bgore\b ", "no gore")
    assert (rule.kind, rule.pattern, rule.reason) == ("regex", r"\bgore\b", "no gore")
    assert text == f"<@900> added rule #{rule.id} (regex `\\bgore\\b`): no gore"
    assert await world.admin.rules(GUILD) == [rule]
    assert len(await world.gate.rules(GUILD)) == 1


async def test_add_rule_rejects_an_invalid_regex_and_stores_nothing(world: World) -> None:
    with pytest.raises(InvalidInput, match="invalid"):
        await world.admin.add_rule(GUILD, ADMIN, "regex", "([a-z]", "broken")
    with pytest.raises(InvalidInput, match="too slow"):
        await world.admin.add_rule(GUILD, ADMIN, "regex", "(a|aa)+$", "slow")
    assert await world.admin.rules(GUILD) == []
    assert await world.audit_rows() == []


async def test_remove_rule_removes_only_this_guilds_rule(world: World) -> None:
    mine, _ = await world.admin.add_rule(GUILD, ADMIN, "word", "bad", "no")
    theirs, _ = await world.admin.add_rule(OTHER_GUILD, ADMIN, "word", "bad", "no")
    with pytest.raises(InvalidInput, match=f"no rule #{theirs.id} in this server"):
        await world.admin.remove_rule(GUILD, ADMIN, theirs.id)
    with pytest.raises(InvalidInput, match="no rule #9999"):
        await world.admin.remove_rule(GUILD, ADMIN, 9999)
    assert await world.admin.remove_rule(GUILD, ADMIN, mine.id) == f"<@900> removed rule #{mine.id}."
    assert await world.admin.rules(GUILD) == []
    assert await world.admin.rules(OTHER_GUILD) == [theirs]


# -- channels and the log ------------------------------------------------------------------------------


async def test_allowing_and_disallowing_channels(world: World) -> None:
    text = await world.admin.allow_channel(GUILD, ADMIN, 5, True)
    assert text == "<@900> allowed <#5>; images can now be made in only the allowed channels."
    await world.admin.allow_channel(GUILD, ADMIN, 6, True)
    await world.admin.allow_channel(GUILD, ADMIN, 5, True)  # twice: still once
    assert (await world.admin.policy(GUILD)).allowed_channels == frozenset({5, 6})

    await world.admin.allow_channel(GUILD, ADMIN, 5, False)
    policy = await world.admin.policy(GUILD)
    assert policy.allowed_channels == frozenset({6})
    assert not policy.channel_allowed(5)
    text = await world.admin.allow_channel(GUILD, ADMIN, 6, False)
    assert text == "<@900> disallowed <#6>; images can now be made in every channel."
    assert (await world.admin.policy(GUILD)).channel_allowed(5)


async def test_the_log_channel_is_set_and_turned_off(world: World) -> None:
    assert await world.admin.set_log_channel(GUILD, ADMIN, 555) == "<@900> set the moderation log to <#555>."
    assert (await world.admin.policy(GUILD)).log_channel_id == 555
    assert await world.admin.set_log_channel(GUILD, ADMIN, None) == "<@900> turned off the log."
    assert (await world.admin.policy(GUILD)).log_channel_id is None
    assert "log_channel_id" not in await world.guilds.overrides(GUILD)


# -- reset_today -----------------------------------------------------------------------------------------


async def test_reset_today_gives_back_the_days_images_in_the_guilds_time_zone(world: World, clock: WallClock) -> None:
    clock.now = utc(2026, 11, 25, 20)  # already November 26 in Shanghai
    await world.admin.set_limits(GUILD, ADMIN, timezone="Asia/Shanghai")
    for job_id in (1, 2, 3):
        await world.reserve(job_id, user_id=10)
    with pytest.raises(QuotaExceeded):
        await world.reserve(4, user_id=10)  # the limit is 3 a day

    text = await world.admin.reset_today(GUILD, ADMIN, 10)
    assert text == "<@900> reset today's image count of <@10>."
    assert await world.used("user_day", f"{GUILD}:10", "2026-11-26") == 0
    assert await world.used("guild_day_fen", str(GUILD), "2026-11-26") == 54  # the money was spent all the same
    await world.reserve(4, user_id=10)
    assert await world.used("user_day", f"{GUILD}:10", "2026-11-26") == 1


async def test_reset_today_touches_only_that_user(world: World) -> None:
    await world.reserve(1, user_id=10)
    await world.reserve(2, user_id=11)
    await world.admin.reset_today(GUILD, ADMIN, 10)
    assert await world.used("user_day", f"{GUILD}:11", "2026-11-25") == 1


# -- the audit log -------------------------------------------------------------------------------------


CHANGES = [
    pytest.param(lambda a: a.set_limits(GUILD, ADMIN, daily=4), "settings", id="set_limits"),
    pytest.param(lambda a: a.set_role_limit(GUILD, ADMIN, 7, daily=1, monthly=None), "settings", id="role"),
    pytest.param(lambda a: a.block(GUILD, ADMIN, 10, "abuse", timedelta(hours=1)), "block", id="block"),
    pytest.param(lambda a: a.add_rule(GUILD, ADMIN, "word", "bad", "no"), "rule_add", id="add_rule"),
    pytest.param(lambda a: a.allow_channel(GUILD, ADMIN, 5, True), "settings", id="allow_channel"),
    pytest.param(lambda a: a.set_log_channel(GUILD, ADMIN, 555), "settings", id="log_channel"),
    pytest.param(lambda a: a.set_cache(GUILD, ADMIN, enabled=False, counts=None), "settings", id="cache"),
    pytest.param(lambda a: a.reset_today(GUILD, ADMIN, 10), "reset_today", id="reset_today"),
]


@pytest.mark.parametrize(("change", "action"), CHANGES)
async def test_every_change_writes_an_audit_row_with_actor_action_and_time(
    world: World, clock: WallClock, change: Callable[[GuildAdmin], Any], action: str
) -> None:
    await change(world.admin)
    assert await world.audit_rows() == [(str(ADMIN), action, iso(clock.now))]
    assert await world.audit_rows(OTHER_GUILD) == []


async def test_removals_are_audited_too(world: World, clock: WallClock) -> None:
    rule, _ = await world.admin.add_rule(GUILD, ADMIN, "word", "bad", "no")
    await world.admin.block(GUILD, ADMIN, 10, "abuse")
    await world.admin.set_role_limit(GUILD, ADMIN, 7, daily=1, monthly=None)
    clock.advance(minutes=1)
    await world.admin.remove_rule(GUILD, 901, rule.id)
    await world.admin.unblock(GUILD, 901, 10)
    await world.admin.clear_role_limit(GUILD, 901, 7)
    later = iso(clock.now)
    assert (await world.audit_rows())[-3:] == [
        ("901", "rule_remove", later),
        ("901", "unblock", later),
        ("901", "settings", later),
    ]
    entries = await world.guilds.audit_log(GUILD, limit=3)  # newest first, with details
    assert [(e.action, e.details) for e in entries] == [
        ("settings", {"removed": [], "set": {"role_limits": {}}}),
        ("unblock", {"user": 10}),
        ("rule_remove", {"id": rule.id}),
    ]


async def test_the_audit_details_say_what_changed(world: World) -> None:
    await world.admin.set_limits(GUILD, ADMIN, daily=4, timezone="Asia/Shanghai")
    await world.admin.block(GUILD, ADMIN, 10, "abuse", timedelta(hours=1))
    block, settings = await world.guilds.audit_log(GUILD, limit=2)
    assert settings.details == {"removed": [], "set": {"user_daily_limit": 4, "timezone": "Asia/Shanghai"}}
    assert block.details == {"user": 10, "reason": "abuse", "until": iso(utc(2026, 11, 25, 11))}


# -- report and export ------------------------------------------------------------------------------------


async def seed_ledger(world: World, clock: WallClock) -> None:
    """Jobs (ids 1 and 2 outside the usual view: 40 days old, another guild) and refusals, then back to now."""
    now = clock.now

    async def job(job_id: int, at: datetime, outcome: str, *, user: int = 10, guild: int = GUILD, **kw: Any) -> None:
        clock.now = at
        await world.jobs.insert(new_job(job_id, guild_id=guild, user_id=user, prompt=kw.get("prompt")))
        clock.advance(seconds=20)
        if outcome == "queued":
            return
        await world.jobs.mark_submitting(job_id)
        if outcome in ("delivered", "ImageUnavailable"):
            await world.jobs.mark_generated(
                job_id, request_id=f"req-{job_id}", image_url="https://x/i.png", revised_prompt="", upstream_fen=18
            )
        if outcome == "delivered":
            await world.jobs.mark_delivered(job_id, cost_fen=18)
        else:
            await world.jobs.mark_failed(job_id, error_code=outcome, error_message="failed", request_id=f"req-{job_id}")

    await job(1, now - timedelta(days=40), "delivered")  # outside a 30-day report
    await job(2, now - timedelta(days=3), "delivered", guild=OTHER_GUILD)
    await job(11, now - timedelta(days=20), "delivered", user=10)
    await job(12, now - timedelta(days=10), "delivered", user=10, prompt='a "quoted", multi-line\nprompt 提示 =1+1')
    await job(13, now - timedelta(days=9), "ContentRejected", user=10)
    await job(14, now - timedelta(days=5), "delivered", user=11)
    await job(15, now - timedelta(days=4), "ServerError", user=11)
    await job(16, now - timedelta(days=3), "ContentRejected", user=11)
    await job(17, now - timedelta(days=2), "ContentRejected", user=11)
    await job(18, now - timedelta(days=1), "ImageUnavailable", user=12)
    await job(19, now - timedelta(hours=1), "queued", user=12)
    for at, guild, user, reason in [
        (now - timedelta(days=40), GUILD, 10, "user_day"),
        (now - timedelta(days=6), GUILD, 10, "user_day"),
        (now - timedelta(days=5), GUILD, 12, "user_day"),
        (now - timedelta(days=4), GUILD, 11, "rule"),
        (now - timedelta(days=2), OTHER_GUILD, 11, "rule"),
    ]:
        clock.now = at
        await world.guilds.record_refusal(guild, user, reason, "refused")
    clock.now = now


async def test_the_report_counts_images_spend_failures_and_refusals_of_the_period(
    world: World, clock: WallClock
) -> None:
    await seed_ledger(world, clock)
    report = await world.admin.report(GUILD, 30)
    assert (report.since, report.until) == (iso(clock.now - timedelta(days=30)), iso(clock.now))
    assert (report.images, report.cost_fen, report.failures) == (3, 54, 5)
    assert report.upstream_fen == 4 * 18  # three delivered plus the image that could not be fetched
    assert report.failure_codes == {"ContentRejected": 3, "ServerError": 1, "ImageUnavailable": 1}
    assert report.refusals == {"user_day": 2, "rule": 1}
    assert report.top_users == [
        UserSpend(user_id=10, images=2, cost_fen=36, failures=1, content_refusals=1),
        UserSpend(user_id=11, images=1, cost_fen=18, failures=3, content_refusals=2),
        UserSpend(user_id=12, images=0, cost_fen=0, failures=1, content_refusals=0),
    ]


async def test_a_shorter_report_only_sees_its_days(world: World, clock: WallClock) -> None:
    await seed_ledger(world, clock)
    report = await world.admin.report(GUILD, 3)
    assert (report.images, report.failures) == (0, 3)
    assert report.failure_codes == {"ContentRejected": 2, "ImageUnavailable": 1}
    assert report.refusals == {}


async def jobs_table(world: World, guild_id: int, since: datetime, until: datetime) -> list[dict[str, Any]]:
    rows = await world.store.fetch_all(
        "SELECT * FROM jobs WHERE guild_id = ? AND queued_at >= ? AND queued_at < ? ORDER BY id",
        (guild_id, iso(since), iso(until)),
    )
    return [dict(r) for r in rows]


def cny(fen: int) -> str:
    return f"{fen / 100:.2f}"


async def test_the_csv_export_parsed_back_equals_the_jobs_table(world: World, clock: WallClock) -> None:
    await seed_ledger(world, clock)
    exported = await world.admin.export_csv(GUILD, 30)
    parsed = list(csv.DictReader(io.StringIO(exported.decode("utf-8"), newline="")))
    table = await jobs_table(world, GUILD, clock.now - timedelta(days=30), clock.now)
    assert [int(r["job_id"]) for r in parsed] == [row["id"] for row in table] == list(range(11, 20))
    for line, row in zip(parsed, table, strict=True):
        assert line == {
            "job_id": str(row["id"]),
            "queued_at": row["queued_at"],
            "finished_at": row["finished_at"] or "",
            "user_id": str(row["user_id"]),
            "command": row["command"],
            "style": row["style"],
            "size": row["size"],
            "state": row["state"],
            "cost_cny": cny(row["cost_fen"]),
            "upstream_cny": cny(row["upstream_fen"]),
            "request_id": row["request_id"] or "",
            "error_code": row["error_code"] or "",
            "cache_hit": "yes" if row["cache_hit"] else "no",
            "prompt": row["prompt"],
        }
    by_id = {int(r["job_id"]): r for r in parsed}
    assert (by_id[11]["state"], by_id[11]["cost_cny"], by_id[11]["upstream_cny"]) == ("delivered", "0.18", "0.18")
    assert (by_id[18]["state"], by_id[18]["cost_cny"], by_id[18]["upstream_cny"]) == ("failed", "0.00", "0.18")
    assert (by_id[19]["state"], by_id[19]["finished_at"]) == ("queued", "")
    assert by_id[12]["prompt"] == 'a "quoted", multi-line\nprompt 提示 =1+1'  # survives CSV quoting


async def test_the_csv_export_respects_the_period_and_the_guild(world: World, clock: WallClock) -> None:
    await seed_ledger(world, clock)

    async def exported_ids(guild_id: int, days: int) -> list[int]:
        data = await world.admin.export_csv(guild_id, days)
        return [int(r["job_id"]) for r in csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))]

    assert await exported_ids(GUILD, 60) == [1, *range(11, 20)]
    assert await exported_ids(GUILD, 2) == [17, 18, 19]  # 17 was queued exactly 2 days ago: [since, until)
    assert await exported_ids(OTHER_GUILD, 30) == [2]


async def test_an_empty_export_is_just_the_header(world: World) -> None:
    data = await world.admin.export_csv(GUILD, 30)
    assert data.decode("utf-8").splitlines() == [
        "job_id,queued_at,finished_at,user_id,command,style,size,state,cost_cny,upstream_cny,request_id,"
        "error_code,cache_hit,prompt"
    ]


# -- concurrent changes: one statement each, nothing lost ----------------------------------------------


@pytest.fixture
async def second_process(world: World, make_settings: Callable[..., Settings], clock: WallClock):
    """Another bot process on the same database: its own Store (connections), gatekeeper and admin."""
    settings = make_settings(user_daily_limit=3)
    store = await open_store(settings.database_url, clock=clock)
    try:
        yield GuildAdmin(store, Gatekeeper(settings, GuildStore(store), utcnow=clock))
    finally:
        await store.close()


async def test_two_channels_allowed_at_once_are_both_allowed(world: World) -> None:
    await asyncio.gather(
        world.admin.allow_channel(GUILD, ADMIN, 5, True), world.admin.allow_channel(GUILD, 901, 6, True)
    )
    assert (await world.admin.policy(GUILD)).allowed_channels == frozenset({5, 6})
    await asyncio.gather(
        world.admin.allow_channel(GUILD, ADMIN, 7, True), world.admin.allow_channel(GUILD, 901, 5, False)
    )
    assert (await world.admin.policy(GUILD)).allowed_channels == frozenset({6, 7})
    assert [action for _, action, _ in await world.audit_rows()] == ["settings"] * 4


async def test_two_role_limits_set_at_once_are_both_kept(world: World) -> None:
    await asyncio.gather(
        world.admin.set_role_limit(GUILD, ADMIN, 777, daily=50, monthly=None),
        world.admin.set_role_limit(GUILD, 901, 778, daily=1, monthly=5),
    )
    assert dict((await world.admin.policy(GUILD)).role_limits) == {777: RoleLimit(50, None), 778: RoleLimit(1, 5)}
    await asyncio.gather(
        world.admin.clear_role_limit(GUILD, ADMIN, 777),
        world.admin.set_role_limit(GUILD, 901, 779, daily=2),  # monthly follows the guild's (unlimited)
    )
    assert dict((await world.admin.policy(GUILD)).role_limits) == {778: RoleLimit(1, 5), 779: RoleLimit(2, None)}


async def test_changes_from_two_processes_at_once_are_all_kept(world: World, second_process: GuildAdmin) -> None:
    admins = (world.admin, second_process)
    channels, roles = range(100, 120), range(700, 720)
    await asyncio.gather(
        *(admins[c % 2].allow_channel(GUILD, ADMIN, c, True) for c in channels),
        *(admins[r % 2].set_role_limit(GUILD, ADMIN, r, daily=r - 700, monthly=None) for r in roles),
        world.admin.set_limits(GUILD, ADMIN, daily=10),
        second_process.set_limits(GUILD, 901, cooldown_s=30),
    )
    for admin in admins:
        policy = await admin.policy(GUILD)
        assert policy.allowed_channels == frozenset(channels)
        assert dict(policy.role_limits) == {r: RoleLimit(r - 700, None) for r in roles}
        assert (policy.user_daily_limit, policy.cooldown_s) == (10, 30)
    assert len(await world.audit_rows()) == 42
