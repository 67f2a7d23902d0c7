"""/imagine-admin, /usage and the limits and moderation of issue 4, end to end: the real discord.py
client (our ImagineBot) against the fake Discord and the fake image API, with a real SQLite file.

Admin commands are subcommands; user, role and channel options are sent in Discord's shape (a
raw option carrying the id, plus the interaction's `resolved` data), see `admin()` below.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.storage.reports import LEDGER_COLUMNS
from tests.discord.conftest import BotHarness, private_refusal
from tests.fakes.fake_discord import DEFAULT_PERMISSIONS, FakeGuild, FakeMessage, SentInteraction
from tests.fakes.fake_discord_models import member_payload, role_payload, user_payload
from tests.fakes.image_api import Reply

MANAGE_GUILD = 1 << 5
ADMIN_PERMISSIONS = str(MANAGE_GUILD)
ADMIN_ID = 900_001
USER_ID = 900_101
OTHER_ID = 900_102
NO_PINGS = {"parse": []}
NO_PERMISSION = "You do not have permission to use this command here."
ROLE_A, ROLE_B = 700_001, 700_002
# a wall-clock instant long before the interactions' real creation time, so reply tokens stay usable
NOON_UTC = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
NEXT_UTC_MIDNIGHT = int(datetime(2026, 3, 11, tzinfo=UTC).timestamp())


class WallClock:
    """The injected UTC clock of limits, periods and timestamps; moves only when told."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


# -- driving admin commands -------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A user (6), channel (7) or role (8) option value."""

    type: int
    id: int


def user(user_id: int) -> Ref:
    return Ref(6, user_id)


def channel(channel_id: int) -> Ref:
    return Ref(7, channel_id)


def role(role_id: int) -> Ref:
    return Ref(8, role_id)


def _resolved(refs: list[Ref], guild_id: int) -> dict[str, Any]:
    """Discord's `data.resolved` for the options: users (+ members), channels, roles."""
    resolved: dict[str, dict[str, Any]] = {}
    for ref in refs:
        key = str(ref.id)
        if ref.type == 6:
            member = member_payload(user_payload(ref.id), [], "0", 0)
            member.pop("user")  # Discord sends the user apart from the member
            resolved.setdefault("users", {})[key] = user_payload(ref.id)
            resolved.setdefault("members", {})[key] = member
        elif ref.type == 7:
            resolved.setdefault("channels", {})[key] = {
                "id": key,
                "type": 0,
                "name": f"channel-{ref.id}",
                "permissions": DEFAULT_PERMISSIONS,
                "parent_id": None,
            }
        else:
            resolved.setdefault("roles", {})[key] = role_payload(ref.id, guild_id, 1)
    return resolved


def admin(
    harness: BotHarness,
    *path: str,
    user_id: int = ADMIN_ID,
    permissions: str = ADMIN_PERMISSIONS,
    guild_id: int | None = None,
    channel_id: int | None = None,
    **options: Any,
) -> SentInteraction:
    """`admin(h, "limits", "set", daily="5")` is /imagine-admin limits set daily:5."""
    group, subcommand = path if len(path) == 2 else (None, path[0])
    guild_id = guild_id or harness.discord.guild_id
    refs = [value for value in options.values() if isinstance(value, Ref)]
    raw = {
        name: {"type": value.type, "value": str(value.id)} if isinstance(value, Ref) else value
        for name, value in options.items()
    }
    return harness.slash(
        "imagine-admin",
        raw,
        subcommand_group=group,
        subcommand=subcommand,
        user_id=user_id,
        permissions=permissions,
        guild_id=guild_id,
        channel_id=channel_id,
        resolved=_resolved(refs, guild_id) if refs else None,
    )


async def answer(harness: BotHarness, sent: SentInteraction) -> FakeMessage:
    """The (private) answer to an admin command or /usage."""
    message = await harness.reply(sent, lambda m: bool(m.content or m.embeds))
    assert message.ephemeral, message.content
    return message


async def run_admin(harness: BotHarness, *path: str, **options: Any) -> str:
    """Run an admin command as an admin; its private answer's text."""
    return (await answer(harness, admin(harness, *path, **options))).content


async def refusal(harness: BotHarness, sent: SentInteraction) -> str:
    """The private sentence of a refused /imagine: its one and only response; no public trace."""
    return await private_refusal(harness, sent)


async def delivered(harness: BotHarness, sent: SentInteraction) -> None:
    await harness.result(sent)
    assert (await harness.job(sent.id)).state == "delivered"


_PICTURES = itertools.count(1)


def imagine(harness: BotHarness, prompt: str | None = None, **kw: Any) -> SentInteraction:
    """Each call asks for a different picture by default: identical ones would be free cache hits."""
    prompt = prompt if prompt is not None else f"a lighthouse at dusk, take {next(_PICTURES)}"
    options = {"prompt": prompt, **kw.pop("options", {})}
    return harness.slash("imagine", options, **kw)


async def rows(harness: BotHarness, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    assert harness.bot is not None and harness.bot.pipeline is not None
    return [dict(row) for row in await harness.bot.pipeline.store.fetch_all(sql, params)]


async def counter(harness: BotHarness, scope: str, subject: str) -> int:
    found = await rows(
        harness, "SELECT SUM(used) AS used FROM quota_counters WHERE scope = ? AND subject = ?", (scope, subject)
    )
    return int(found[0]["used"] or 0)


async def nothing_spent(harness: BotHarness) -> None:
    """No job row, no upstream call, no counter above zero."""
    assert await rows(harness, "SELECT id FROM jobs") == []
    assert harness.api.requests == []
    assert await rows(harness, "SELECT * FROM quota_counters WHERE used > 0 AND scope != 'cooldown'") == []


# -- 1. only admins -----------------------------------------------------------------------------------

SECOND_CHANNEL = channel(0)  # a placeholder: the guild's second channel, known once the fake runs
ADMIN_COMMANDS = {
    "limits set": (("limits", "set"), {"daily": "0", "daily_budget": "0"}),
    "limits role": (("limits", "role"), {"role": role(ROLE_A), "daily": "0"}),
    "limits show": (("limits", "show"), {}),
    "block": (("block",), {"user": user(USER_ID), "reason": "spam", "hours": 1}),
    "rules add": (("rules", "add"), {"kind": "word", "pattern": "cat", "reason": "no cats"}),
    "channels allow": (("channels", "allow"), {"channel": SECOND_CHANNEL}),
    "channels spoiler": (("channels", "spoiler"), {"channel": SECOND_CHANNEL}),
    "private": (("private",), {"allowed": False}),
    "log-channel": (("log-channel",), {"channel": SECOND_CHANNEL}),
    "reset": (("reset",), {"user": user(USER_ID)}),
    "report": (("report",), {}),
    "export": (("export",), {}),
    "status": (("status",), {}),
}


async def assert_refused_and_nothing_changed(harness: BotHarness, sent: SentInteraction) -> None:
    message = await harness.reply(sent, lambda m: bool(m.content))
    assert (message.content, message.ephemeral) == (NO_PERMISSION, True)
    assert harness.discord.callbacks(sent.id) == [4]  # answered, not deferred (no export running)
    assert harness.discord.followups(sent.id) == []  # no CSV file
    for table in ("audit_log", "guild_settings", "blocks", "prompt_rules"):
        assert await rows(harness, f"SELECT * FROM {table}") == [], table
    public = [m for m in harness.discord.messages.values() if not m.ephemeral and not m.deleted]
    assert public == []  # nothing in a moderation log or anywhere else


@pytest.mark.parametrize(("path", "options"), ADMIN_COMMANDS.values(), ids=ADMIN_COMMANDS.keys())
async def test_a_member_without_manage_server_cannot_run_an_admin_command(
    harness: BotHarness, path: tuple[str, ...], options: dict[str, Any]
) -> None:
    await harness.start()
    second = harness.discord.guilds[0].channel_ids[1]
    options = {k: channel(second) if v == SECOND_CHANNEL else v for k, v in options.items()}
    sent = admin(harness, *path, user_id=USER_ID, permissions="0", **options)
    await assert_refused_and_nothing_changed(harness, sent)


async def test_every_permission_but_manage_server_is_not_enough(harness: BotHarness) -> None:
    await harness.start(user_daily_limit=1)
    moderator = str(int(DEFAULT_PERMISSIONS) & ~MANAGE_GUILD)
    sent = admin(harness, "limits", "set", user_id=USER_ID, permissions=moderator, daily="unlimited")
    await assert_refused_and_nothing_changed(harness, sent)
    await delivered(harness, imagine(harness, user_id=OTHER_ID))
    # the limit is unchanged: still one a day
    assert (await refusal(harness, imagine(harness, user_id=OTHER_ID))).startswith("You have used your 1 image(s)")


# -- 2. role overrides: the most generous wins -----------------------------------------------------------


async def start_with_roles(harness: BotHarness) -> int:
    """Guild default 1 a day; role A 2 a day; role B unlimited. Returns the guild id."""
    guild = harness.discord.add_guild(FakeGuild(roles=[ROLE_A, ROLE_B]))
    await harness.start(wall_clock=WallClock(NOON_UTC))
    gid = guild.id
    assert await run_admin(harness, "limits", "set", guild_id=gid, daily="1") == (
        f"<@{ADMIN_ID}> set images per user per day to 1."
    )
    assert await run_admin(harness, "limits", "role", guild_id=gid, role=role(ROLE_A), daily="2") == (
        f"<@{ADMIN_ID}> set <@&{ROLE_A}> to 2 image(s) a day, the server's monthly limit."
    )
    await run_admin(harness, "limits", "role", guild_id=gid, role=role(ROLE_B), daily="unlimited")
    return gid


def daily_limit_sentence(limit: int) -> str:
    return f"You have used your {limit} image(s) for today; your limit resets <t:{NEXT_UTC_MIDNIGHT}:R>."


async def test_a_role_override_replaces_the_guild_default(harness: BotHarness) -> None:
    gid = await start_with_roles(harness)
    for _ in range(2):
        await delivered(harness, imagine(harness, guild_id=gid, user_id=USER_ID, roles=[ROLE_A]))
    third = imagine(harness, guild_id=gid, user_id=USER_ID, roles=[ROLE_A])
    assert await refusal(harness, third) == daily_limit_sentence(2)
    assert len(harness.api.requests) == 2


async def test_the_most_generous_role_wins_and_unlimited_beats_a_number(harness: BotHarness) -> None:
    gid = await start_with_roles(harness)
    for _ in range(4):  # more than role A's 2 and the default 1
        await delivered(harness, imagine(harness, guild_id=gid, user_id=USER_ID, roles=[ROLE_A, ROLE_B]))
    assert await counter(harness, "user_day", f"{gid}:{USER_ID}") == 4


async def test_a_member_without_an_overridden_role_gets_the_guild_default(harness: BotHarness) -> None:
    gid = await start_with_roles(harness)
    await delivered(harness, imagine(harness, guild_id=gid, user_id=USER_ID))
    assert await refusal(harness, imagine(harness, guild_id=gid, user_id=USER_ID)) == daily_limit_sentence(1)


# -- 3. the guild's budget and its midnight ------------------------------------------------------------


async def test_the_daily_budget_runs_out_and_comes_back_at_the_guilds_midnight(harness: BotHarness) -> None:
    shanghai_2350 = datetime(2026, 3, 10, 15, 50, tzinfo=UTC)  # 23:50 in Asia/Shanghai (UTC+8)
    next_shanghai_midnight = int(datetime(2026, 3, 10, 16, 0, tzinfo=UTC).timestamp())
    clock = WallClock(shanghai_2350)
    await harness.start(wall_clock=clock)
    assert await run_admin(harness, "limits", "set", daily_budget="0.36", timezone="Asia/Shanghai") == (
        f"<@{ADMIN_ID}> set daily budget to ¥0.36, time zone to Asia/Shanghai."
    )
    await delivered(harness, imagine(harness, user_id=USER_ID))
    await delivered(harness, imagine(harness, user_id=OTHER_ID))
    third = imagine(harness, user_id=OTHER_ID)
    assert await refusal(harness, third) == (
        f"This server has spent its daily image budget. It resets <t:{next_shanghai_midnight}:R>."
    )
    assert await rows(harness, "SELECT id FROM jobs WHERE id = ?", (third.id,)) == []
    assert len(harness.api.requests) == 2
    clock.advance(minutes=11)  # 00:01 the next day in Shanghai, still 10 March in UTC
    await delivered(harness, imagine(harness, user_id=OTHER_ID))
    guild = str(harness.discord.guild_id)
    spent = await rows(
        harness, "SELECT period, used FROM quota_counters WHERE scope = 'guild_day_fen' AND subject = ?", (guild,)
    )
    assert sorted((r["period"], r["used"]) for r in spent) == [("2026-03-10", 36), ("2026-03-11", 18)]


# -- 4. /usage ------------------------------------------------------------------------------------------


async def test_usage_shows_the_callers_counts_and_the_servers_budget_privately(harness: BotHarness) -> None:
    await harness.start(wall_clock=WallClock(NOON_UTC), user_daily_limit=5, user_monthly_limit=40)
    for who in (USER_ID, USER_ID, OTHER_ID):
        await delivered(harness, imagine(harness, user_id=who))
    message = await answer(harness, harness.slash("usage", user_id=USER_ID))
    [embed] = message.embeds
    month_reset = int(datetime(2026, 4, 1, tzinfo=UTC).timestamp())
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields == {
        "Today": f"2 of 5 (3 left)\nresets <t:{NEXT_UTC_MIDNIGHT}:R>",
        "This month": f"2 of 40 (38 left)\nresets <t:{month_reset}:R>",
        "Server budget today": "¥9.46 left of ¥10.00",  # three images of 0.18 in the whole server
        "Server budget this month": "¥99.46 left of ¥100.00",
    }


# -- 5. prompt rules -------------------------------------------------------------------------------------

NO_SECRETS = "This server does not allow that request: no secrets."


async def start_with_secret_rule(harness: BotHarness) -> None:
    await harness.start()
    text = await run_admin(harness, "rules", "add", kind="word", pattern="secret", reason="no secrets")
    assert text == f"<@{ADMIN_ID}> added rule #1 (word `secret`): no secrets"


@pytest.mark.parametrize("prompt", ["ＳＥＣＲＥＴ plans", "the s.e.c.r.e.t door", "s3cr3t", "a se\u200bcret map"])
async def test_a_word_rule_refuses_disguised_spellings_before_anything_is_spent(
    harness: BotHarness, prompt: str
) -> None:
    await start_with_secret_rule(harness)
    assert await refusal(harness, imagine(harness, prompt, user_id=USER_ID)) == NO_SECRETS
    await nothing_spent(harness)
    [refused] = await rows(harness, "SELECT user_id, reason FROM refusals")
    assert refused == {"user_id": USER_ID, "reason": "rule"}


async def test_a_word_rule_does_not_match_inside_a_longer_word(harness: BotHarness) -> None:
    await start_with_secret_rule(harness)
    await delivered(harness, imagine(harness, "a secretary at her desk"))


async def test_the_poster_title_and_the_negative_prompt_are_checked_too(harness: BotHarness) -> None:
    await start_with_secret_rule(harness)
    poster = harness.slash("poster", {"title": "Top Ｓｅｃｒｅｔ"}, user_id=USER_ID)
    assert await refusal(harness, poster) == NO_SECRETS
    negative = imagine(harness, "a cat", user_id=USER_ID, options={"negative_prompt": "no s e c r e t"})
    assert await refusal(harness, negative) == NO_SECRETS
    await nothing_spent(harness)


async def test_a_regex_rule_refuses_a_matching_prompt(harness: BotHarness) -> None:
    await harness.start()
    await run_admin(harness, "rules", "add", kind="regex", pattern=r"bank\s*accounts?\b", reason="no banking")
    sent = imagine(harness, "show my BANK   account number", user_id=USER_ID)
    assert await refusal(harness, sent) == "This server does not allow that request: no banking."
    await nothing_spent(harness)
    await delivered(harness, imagine(harness, "a river bank in spring"))


async def test_an_invalid_regex_is_refused_when_added_and_nothing_is_stored(harness: BotHarness) -> None:
    await harness.start()
    text = await run_admin(harness, "rules", "add", kind="regex", pattern="(", reason="broken")
    assert text.startswith("That regular expression is invalid:")
    listed = await answer(harness, admin(harness, "rules", "list"))
    assert listed.embeds[0]["description"] == "No rules."
    assert await rows(harness, "SELECT * FROM prompt_rules") == []
    assert await rows(harness, "SELECT * FROM audit_log") == []


# -- 6. the moderation log ----------------------------------------------------------------------------------


async def test_the_moderation_log_names_who_and_what_and_pings_nobody(harness: BotHarness) -> None:
    await harness.start()
    here, log_channel = harness.discord.guilds[0].channel_ids

    async def logged(count: int) -> list[FakeMessage]:
        """The log once it has `count` lines (each step waits, so the order is the steps' order)."""
        return await harness.discord.wait_for(
            lambda f: (found := f.channel_messages(log_channel)) and len(found) >= count and found
        )

    assert await run_admin(harness, "log-channel", channel=channel(log_channel)) == (
        f"<@{ADMIN_ID}> set the moderation log to <#{log_channel}>."
    )
    await logged(1)
    await run_admin(harness, "rules", "add", kind="word", pattern="secret", reason="no secrets")
    await logged(2)
    await refusal(harness, imagine(harness, "top secret plans", user_id=USER_ID))
    await logged(3)
    harness.api.script(Reply.content_rejected())
    rejected = imagine(harness, "something the provider dislikes", user_id=OTHER_ID)
    await harness.reply(rejected, lambda m: m.content.startswith("❌"))
    request_id = harness.api.requests[0].request_id
    await logged(4)
    await run_admin(harness, "block", user=user(USER_ID), reason="spamming the channel", hours=1)
    await logged(5)
    await run_admin(harness, "limits", "set", daily="5")

    expected = [
        f"⚙️ <@{ADMIN_ID}> set the moderation log to <#{log_channel}>.",
        f"⚙️ <@{ADMIN_ID}> added rule #1 (word `secret`): no secrets",
        f"🚫 Refused <@{USER_ID}> in <#{here}> by rule #1 (word `secret`, in the prompt): > top secret plans",
        f"⚠️ The provider refused a prompt of <@{OTHER_ID}> (content safety, request `{request_id}`): "
        "> something the provider dislikes",
        f"⚙️ <@{ADMIN_ID}> blocked <@{USER_ID}> for 1 hour(s): spamming the channel",
        f"⚙️ <@{ADMIN_ID}> set images per user per day to 5.",
    ]
    lines = await logged(len(expected))
    assert [m.content for m in lines] == expected
    assert all(m.allowed_mentions == NO_PINGS and not m.ephemeral for m in lines)


# -- 7. blocks ------------------------------------------------------------------------------------------


async def test_a_blocked_user_is_told_why_until_unblocked(harness: BotHarness) -> None:
    await harness.start(wall_clock=WallClock(NOON_UTC))
    await run_admin(harness, "block", user=user(USER_ID), reason="spamming the channel", hours=1)
    until = int((NOON_UTC + timedelta(hours=1)).timestamp())
    assert await refusal(harness, imagine(harness, user_id=USER_ID)) == (
        f"You are blocked from generating images here until <t:{until}:f>: spamming the channel"
    )
    await nothing_spent(harness)
    await delivered(harness, imagine(harness, user_id=OTHER_ID))  # only that user
    assert await run_admin(harness, "unblock", user=user(USER_ID)) == f"<@{ADMIN_ID}> unblocked <@{USER_ID}>."
    await delivered(harness, imagine(harness, user_id=USER_ID))


async def test_an_expired_block_no_longer_applies(harness: BotHarness) -> None:
    clock = WallClock(NOON_UTC)
    await harness.start(wall_clock=clock)
    await run_admin(harness, "block", user=user(USER_ID), reason="cool down", hours=1)
    assert (await refusal(harness, imagine(harness, user_id=USER_ID))).startswith("You are blocked")
    clock.advance(hours=1, seconds=1)
    await delivered(harness, imagine(harness, user_id=USER_ID))


# -- 8. allowed channels ------------------------------------------------------------------------------------


async def test_allowed_channels_refuse_elsewhere_until_disallowed(harness: BotHarness) -> None:
    await harness.start()
    other, allowed = harness.discord.guilds[0].channel_ids
    assert await run_admin(harness, "channels", "allow", channel=channel(allowed)) == (
        f"<@{ADMIN_ID}> allowed <#{allowed}>; images can now be made in only the allowed channels."
    )
    elsewhere = imagine(harness, channel_id=other)
    assert await refusal(harness, elsewhere) == f"Images can only be made in <#{allowed}> in this server."
    await nothing_spent(harness)
    await delivered(harness, imagine(harness, channel_id=allowed))
    await run_admin(harness, "channels", "disallow", channel=channel(allowed))
    await delivered(harness, imagine(harness, channel_id=other))


# -- 9. failures give the quota back --------------------------------------------------------------------------

FAILURE_ROWS = {
    "400 bad request": ([Reply.error(400, "Parameter Error")], {}),
    "content rejected": ([Reply.content_rejected()], {}),
    "401": ([Reply.error(401)], {}),
    "403": ([Reply.error(403)], {}),
    "429 past retries and requeues": ([Reply.error(429, retry_after=0)] * 6, {}),
    "5xx after retries": ([Reply.error(500)], {}),
    "timeout": ([Reply.hang()], {"upstream_timeout_s": 0.5}),
    "200 without an image": ([Reply.no_image()], {}),
    "200 not json": ([Reply.non_json(200)], {}),
    "image missing": ([Reply.ok(image="missing")], {}),
}


@pytest.mark.parametrize(("replies", "overrides"), FAILURE_ROWS.values(), ids=FAILURE_ROWS.keys())
async def test_a_failed_job_costs_nothing_and_gives_its_image_back(
    harness: BotHarness, replies: list[Reply], overrides: dict[str, Any]
) -> None:
    await harness.start(user_daily_limit=1, upstream_max_retries=0, **overrides)
    harness.api.script(*replies)
    failed = imagine(harness, user_id=USER_ID)
    job = await harness.job(failed.id)
    assert (job.state, job.cost_fen) == ("failed", 0)
    member, guild = f"{harness.discord.guild_id}:{USER_ID}", str(harness.discord.guild_id)
    assert (await counter(harness, "user_day", member), await counter(harness, "guild_day_fen", guild)) == (0, 0)
    await delivered(harness, imagine(harness, user_id=USER_ID))  # the one image of the day is still there
    assert (await counter(harness, "user_day", member), await counter(harness, "guild_day_fen", guild)) == (1, 18)
    assert (await refusal(harness, imagine(harness, user_id=USER_ID))).startswith("You have used your 1 image(s)")


async def test_a_result_discord_refuses_to_show_costs_nothing_and_gives_its_image_back(harness: BotHarness) -> None:
    await harness.start(user_daily_limit=1)
    harness.discord.fail_next("PATCH", r"/webhooks/.*/messages/", 400, times=100)  # every edit of the reply
    failed = imagine(harness, user_id=USER_ID)
    job = await harness.job(failed.id)
    assert (job.state, job.error_code, job.cost_fen) == ("failed", "ImagineError", 0)
    harness.discord.clear_failures()
    await delivered(harness, imagine(harness, user_id=USER_ID))
    member = f"{harness.discord.guild_id}:{USER_ID}"
    assert await counter(harness, "user_day", member) == 1


async def test_the_reroll_button_is_held_to_the_same_daily_limit(harness: BotHarness) -> None:
    await harness.start(wall_clock=WallClock(NOON_UTC), user_daily_limit=1)
    first = imagine(harness, user_id=USER_ID)
    message = await harness.result(first)
    reroll = harness.discord.click(message.id, f"imagine:reroll:{first.id}", user_id=USER_ID)
    assert await refusal(harness, reroll) == daily_limit_sentence(1)
    assert len(harness.api.requests) == 1


# -- 10. the ledger: export and report ------------------------------------------------------------------------


async def seed_ledger(harness: BotHarness) -> tuple[int, int]:
    """In the first guild: USER_ID 2 delivered, OTHER_ID 1 refused by the provider and 1 delivered.
    In a second guild: 1 delivered. Returns (first guild, second guild)."""
    second = harness.discord.add_guild(FakeGuild(name="Elsewhere"))
    await harness.start()
    gid = harness.discord.guild_id
    await delivered(harness, imagine(harness, "one", user_id=USER_ID))
    await delivered(harness, imagine(harness, 'two, with "quotes" and 中文', user_id=USER_ID))
    harness.api.script(Reply.content_rejected())
    await harness.job(imagine(harness, "three", user_id=OTHER_ID).id)
    await delivered(harness, imagine(harness, "four", user_id=OTHER_ID))
    await delivered(harness, imagine(harness, "abroad", user_id=USER_ID, guild_id=second.id))
    return gid, second.id


async def test_the_csv_export_matches_the_guilds_jobs(harness: BotHarness) -> None:
    gid, other_gid = await seed_ledger(harness)
    sent = admin(harness, "export")
    answer = await harness.reply(sent, lambda m: bool(m.attachments))
    assert harness.discord.callbacks(sent.id) == [5]  # a private "thinking…" first, then the file in it
    assert answer.ephemeral and harness.discord.followups(sent.id) == []
    [attachment] = answer.attachments
    assert attachment["filename"] == f"imagine-ledger-{gid}-30d.csv"
    reader = csv.DictReader(io.StringIO(attachment["bytes"].decode("utf-8")))
    assert tuple(reader.fieldnames or ()) == LEDGER_COLUMNS
    exported = list(reader)
    jobs = await rows(
        harness,
        "SELECT id, user_id, state, cost_fen, request_id, error_code, prompt FROM jobs WHERE guild_id = ?"
        " ORDER BY queued_at, id",
        (gid,),
    )
    assert [
        (r["job_id"], r["user_id"], r["state"], r["cost_cny"], r["request_id"], r["error_code"], r["prompt"])
        for r in exported
    ] == [
        (str(j["id"]), str(j["user_id"]), j["state"], f"{j['cost_fen'] / 100:.2f}", j["request_id"] or "",
         j["error_code"] or "", j["prompt"])
        for j in jobs
    ]  # fmt: skip
    assert [r["state"] for r in exported] == ["delivered", "delivered", "failed", "delivered"]
    assert [r["cost_cny"] for r in exported] == ["0.18", "0.18", "0.00", "0.18"]
    [abroad] = await rows(harness, "SELECT id FROM jobs WHERE guild_id = ?", (other_gid,))
    assert str(abroad["id"]) not in {r["job_id"] for r in exported}


async def test_the_report_shows_top_users_and_spend(harness: BotHarness) -> None:
    await seed_ledger(harness)
    message = await answer(harness, admin(harness, "report"))
    assert message.allowed_mentions == NO_PINGS
    [embed] = message.embeds
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert embed["title"] == "Report: the last 7 day(s)"
    assert (fields["Images"], fields["Spent"], fields["Failures"]) == ("3", "¥0.54", "1")
    assert fields["Top users"] == (
        f"<@{USER_ID}>: 2 image(s), ¥0.36\n<@{OTHER_ID}>: 1 image(s), ¥0.18, 1 failed, 1 refused by the provider"
    )
    assert fields["Failures by cause"] == "ContentRejected: 1"


# -- 11. reset ------------------------------------------------------------------------------------------------


async def test_an_admin_reset_gives_a_user_todays_images_back_and_is_audited(harness: BotHarness) -> None:
    await harness.start(wall_clock=WallClock(NOON_UTC), user_daily_limit=1)
    await delivered(harness, imagine(harness, user_id=USER_ID))
    assert (await refusal(harness, imagine(harness, user_id=USER_ID))).startswith("You have used your 1 image(s)")
    assert await run_admin(harness, "reset", user=user(USER_ID)) == (
        f"<@{ADMIN_ID}> reset today's image count of <@{USER_ID}>."
    )
    await delivered(harness, imagine(harness, user_id=USER_ID))
    [entry] = await rows(harness, "SELECT guild_id, actor, action, details_json, at FROM audit_log")
    assert {**entry, "details_json": json.loads(entry["details_json"])} == {
        "guild_id": harness.discord.guild_id,
        "actor": str(ADMIN_ID),
        "action": "reset_today",
        "details_json": {"user": USER_ID, "day": "2026-03-10"},
        "at": "2026-03-10T12:00:00.000+00:00",
    }


async def test_every_admin_change_is_audited_with_who_and_when(harness: BotHarness) -> None:
    await harness.start(wall_clock=WallClock(NOON_UTC))
    second = harness.discord.guilds[0].channel_ids[1]
    await run_admin(harness, "limits", "set", daily="3")
    await run_admin(harness, "limits", "role", role=role(ROLE_A), daily="5")
    await run_admin(harness, "block", user=user(USER_ID), reason="spam")
    await run_admin(harness, "unblock", user=user(USER_ID))
    await run_admin(harness, "rules", "add", kind="word", pattern="secret", reason="no secrets")
    await run_admin(harness, "rules", "remove", rule=1)
    await run_admin(harness, "channels", "allow", channel=channel(second))
    await run_admin(harness, "log-channel", channel=channel(second))
    entries = await rows(harness, "SELECT guild_id, actor, action, details_json, at FROM audit_log ORDER BY id")
    assert [(e["actor"], e["action"], json.loads(e["details_json"])) for e in entries] == [
        (str(ADMIN_ID), "settings", {"set": {"user_daily_limit": 3}, "removed": []}),
        (
            str(ADMIN_ID),
            "settings",
            {"set": {"role_limits": {str(ROLE_A): {"daily": 5}}}, "removed": []},
        ),
        (str(ADMIN_ID), "block", {"user": USER_ID, "reason": "spam", "until": None}),
        (str(ADMIN_ID), "unblock", {"user": USER_ID}),
        (str(ADMIN_ID), "rule_add", {"id": 1, "kind": "word", "pattern": "secret"}),
        (str(ADMIN_ID), "rule_remove", {"id": 1}),
        (str(ADMIN_ID), "settings", {"set": {"allowed_channels": [second]}, "removed": []}),
        (str(ADMIN_ID), "settings", {"set": {"log_channel_id": second}, "removed": []}),
    ]
    assert {(e["guild_id"], e["at"]) for e in entries} == {(harness.discord.guild_id, "2026-03-10T12:00:00.000+00:00")}


async def test_a_removed_rule_no_longer_refuses(harness: BotHarness) -> None:
    await start_with_secret_rule(harness)
    assert await refusal(harness, imagine(harness, "secret garden")) == NO_SECRETS
    assert await run_admin(harness, "rules", "remove", rule=1) == f"<@{ADMIN_ID}> removed rule #1."
    await delivered(harness, imagine(harness, "secret garden"))


# -- 12. an admin command is acknowledged before any database work (issue 8.5) ----------------------------


async def test_an_admin_command_is_acknowledged_at_once_even_while_the_store_is_busy(harness: BotHarness) -> None:
    """Discord allows 3 s for the first answer. A busy store (or a slow regex vetting) used to
    sit between the command and its answer; now the private "thinking…" goes first."""
    await harness.start()
    assert harness.bot is not None and harness.bot.pipeline is not None
    store = harness.bot.pipeline.store
    busy = asyncio.Event()

    async def hold_the_store() -> None:
        async with store.transaction():
            busy.set()
            await asyncio.sleep(4.0)

    holder = asyncio.create_task(hold_the_store())
    await busy.wait()
    sent = admin(harness, "rules", "add", kind="regex", pattern=r"bank\s*accounts?", reason="no banking")
    await harness.discord.wait_for(lambda f: f.callbacks(sent.id), timeout=2.0)  # well inside Discord's 3 s
    assert harness.discord.callbacks(sent.id) == [5]
    assert harness.discord.original_message(sent.id).ephemeral  # private, like the answer that follows
    assert not holder.done()  # the database work had not even started
    text = (await harness.reply(sent, lambda m: bool(m.content), timeout=10)).content
    assert text.startswith(f"<@{ADMIN_ID}> added rule #1 (regex")
    await holder


# -- 13. status: uptime, this server's queue, the upstream's health, today's spend (issue 10) ----------------


async def settled_in_queue(harness: BotHarness, job_id: int) -> None:
    """Wait until a job put back by a 429 waits in the queue again, taken by no process."""
    for _ in range(500):
        [row] = await rows(harness, "SELECT state, claimed_by FROM jobs WHERE id = ?", (job_id,))
        if row["state"] == "queued" and row["claimed_by"] is None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not go back to the queue: {row}")


@pytest.mark.both_backends
async def test_status_shows_an_admin_the_queue_the_upstreams_health_and_todays_spend_privately(
    harness: BotHarness, backend: str
) -> None:
    clock = WallClock(NOON_UTC)  # 20:00 in Shanghai
    # a Retry-After above the 1 s the client waits out: the job goes back to the queue, everyone pauses
    await harness.start(wall_clock=clock, upstream_retry_after_cap_s=1)
    await run_admin(harness, "limits", "set", daily_budget="1", timezone="Asia/Shanghai")
    # the first job meets a 429 the client waits out (Retry-After: 0), the second a 500; both are delivered
    harness.api.script(Reply.error(429, retry_after=0), Reply.ok(), Reply.error(500), Reply.ok())
    await delivered(harness, imagine(harness, user_id=USER_ID))
    await delivered(harness, imagine(harness, user_id=OTHER_ID))
    harness.api.script(Reply.error(429, retry_after=30))
    third = imagine(harness, user_id=USER_ID)
    await harness.discord.wait_for(lambda _: len(harness.api.requests) == 5 and harness.api.requests[-1].status == 429)
    await settled_in_queue(harness, third.id)
    clock.advance(seconds=90)  # the third job has waited a minute and a half

    sent = admin(harness, "status")
    message = await answer(harness, sent)
    assert harness.discord.callbacks(sent.id) == [5]  # acknowledged privately before any store work
    assert message.allowed_mentions == NO_PINGS
    [embed] = message.embeds
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert list(fields) == ["Uptime", "This server's queue", "Upstream", "Spent here today"]

    assert re.fullmatch(
        r"\d+ (s|min \d+ s) \(since <t:\d+:f>\)\nshard 0 of 1 in this process; this server is on shard 0",
        fields["Uptime"],
    ), fields["Uptime"]

    queue = fields["This server's queue"].split("\n")
    assert queue[:2] == ["1 waiting (at most 25), 0 generating or delivering", "oldest waiting 1 min 30 s"]
    upstream = fields["Upstream"].split("\n")
    assert upstream[:3] == [
        "errors: 1 in the last hour, 1 in 24 h",
        "429s: 2 in the last hour, 2 in 24 h",
        "answered: 2 in the last hour, 2 in 24 h (0 refused as bad requests in 24 h)",
    ]
    paused = re.fullmatch(r"paused: (\d+) s left", upstream[3])
    assert paused is not None and 0 < int(paused[1]) <= 30, upstream[3]
    assert upstream[4:] == ["in flight: 0 of 2", "started in the last minute: 5 of 6000"]
    # nothing starts before the pause ends: the estimate for a new request says so
    wait = re.fullmatch(r"a new request would start in (\d+) s", queue[2])
    assert wait is not None and int(wait[1]) >= int(paused[1]) - 1, queue[2]

    shanghai_midnight = int(datetime(2026, 3, 10, 16, 0, tzinfo=UTC).timestamp())
    assert fields["Spent here today"] == (  # two images delivered and one reserved by the waiting job
        "¥0.54 spent, ¥0.46 left of ¥1.00 (images reserved by waiting jobs included)\n"
        f"the day ends <t:{shanghai_midnight}:R> (Asia/Shanghai)"
    )
    assert embed["footer"]["text"] == (
        "Queue and spend: every bot process (shared database). Uptime and upstream: this process only."
        if backend == "postgresql"
        else "Uptime and upstream: this bot process."
    )
