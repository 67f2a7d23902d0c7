"""The result cache as members and admins see it, end to end: the real discord.py client (our
ImagineBot) against the fake Discord and the fake image API, with a real SQLite file.

An identical request is answered from the cache (no upstream call, ¥0, a "From cache" field),
identical requests in flight share one upstream call, Reroll always pays for a new image, and
`/imagine-admin cache` turns the cache off or makes hits count toward the image limits.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from tests.discord.conftest import BotHarness, private_answer, private_refusal
from tests.fakes.fake_discord import FakeGuild, FakeMessage, SentInteraction
from tests.fakes.image_api import Reply
from tests.fakes.png import png_size

ADMIN_ID, ADMIN_PERMISSIONS = 900_001, str(1 << 5)  # MANAGE_GUILD
USER_ID, OTHER_ID = 900_101, 900_102
PROMPT = "A paper boat on a rainy street"
FROM_CACHE = "the same request was made before; Reroll for a new image"
NO_PERMISSION = "You do not have permission to use this command here."


def imagine(harness: BotHarness, prompt: str = PROMPT, *, user_id: int = USER_ID, **kw: Any) -> SentInteraction:
    options = {"prompt": prompt, **kw.pop("options", {})}
    return harness.slash("imagine", options, user_id=user_id, **kw)


def fields(message: FakeMessage) -> dict[str, str]:
    [embed] = message.embeds
    return {field["name"]: field["value"] for field in embed["fields"]}


async def delivered(harness: BotHarness, sent: SentInteraction) -> FakeMessage:
    message = await harness.result(sent)
    assert (await harness.job(sent.id)).state == "delivered"
    return message


async def refusal(harness: BotHarness, sent: SentInteraction) -> str:
    return await private_refusal(harness, sent)


async def settled(harness: BotHarness, sent: SentInteraction) -> FakeMessage | str:
    """The reply with its image, or the text of a private refusal, whichever comes."""

    def check(fake: Any) -> FakeMessage | str | None:
        refused = private_answer(fake, sent, strict=False)
        if refused is not None:
            return refused.content
        message = fake.original_message(sent.id)
        return message if message is not None and message.attachments else None

    return await harness.discord.wait_for(check, timeout=15)


async def cache_admin(harness: BotHarness, *, guild_id: int | None = None, **options: bool) -> str:
    """/imagine-admin cache ... as an admin; its private answer."""
    sent = harness.slash(
        "imagine-admin",
        options,
        subcommand="cache",
        user_id=ADMIN_ID,
        permissions=ADMIN_PERMISSIONS,
        guild_id=guild_id,
    )
    message = await harness.reply(sent, lambda m: bool(m.content))
    assert message.ephemeral
    return message.content


async def rows(harness: BotHarness, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    assert harness.bot is not None and harness.bot.pipeline is not None
    return [dict(row) for row in await harness.bot.pipeline.store.fetch_all(sql, params)]


async def counter(harness: BotHarness, scope: str, subject: str) -> int:
    sql = "SELECT SUM(used) AS used FROM quota_counters WHERE scope = ? AND subject = ?"
    found = await rows(harness, sql, (scope, subject))
    return int(found[0]["used"] or 0)


# -- a hit ----------------------------------------------------------------------------------------------------


async def test_an_identical_request_is_answered_from_the_cache_in_its_own_reply(harness: BotHarness) -> None:
    await harness.start()
    first = await delivered(harness, imagine(harness))
    second_sent = imagine(harness, user_id=OTHER_ID)
    second = await delivered(harness, second_sent)
    assert harness.api.generation_count == 1
    assert second.id != first.id and second.id == harness.discord.original_message(second_sent.id).id
    assert second.attachments[0]["bytes"] == first.attachments[0]["bytes"]
    assert second.attachments[0]["filename"] == f"imagine-{second_sent.id}.png"
    assert png_size(second.attachments[0]["bytes"]) == (1328, 1328)
    assert fields(second)["From cache"] == FROM_CACHE and fields(second)["Cost"] == "¥0.00"
    assert "From cache" not in fields(first) and fields(first)["Cost"] == "¥0.18"
    assert f"imagine:reroll:{second_sent.id}" in second.custom_ids()
    job = await harness.job(second_sent.id)
    assert (job.cache_hit, job.cost_fen, job.upstream_fen) == (True, 0, 0)


async def test_a_hit_does_not_count_toward_the_daily_limit_by_default(harness: BotHarness) -> None:
    await harness.start(user_daily_limit=1)
    await delivered(harness, imagine(harness))
    await delivered(harness, imagine(harness))  # identical: free, and not one of today's images
    refused = await refusal(harness, imagine(harness, "A paper boat on a sunny street"))
    assert refused.startswith("You have used your 1 image(s) for today")
    assert harness.api.generation_count == 1


async def test_a_hit_counts_toward_the_daily_limit_when_an_admin_says_so(harness: BotHarness) -> None:
    await harness.start(user_daily_limit=1)
    said = await cache_admin(harness, counts_toward_limits=True)
    assert said == f"<@{ADMIN_ID}> made cached images count toward image limits."
    await delivered(harness, imagine(harness))
    refused = await refusal(harness, imagine(harness))  # identical, but today's image is used
    assert refused.startswith("You have used your 1 image(s) for today")
    assert harness.api.generation_count == 1
    [job] = await rows(harness, "SELECT cache_hit, cost_fen FROM jobs")
    assert job == {"cache_hit": 0, "cost_fen": 18}


async def test_the_guild_budget_is_not_charged_for_a_hit(harness: BotHarness) -> None:
    await harness.start(guild_daily_budget_cny="0.18")
    await delivered(harness, imagine(harness))
    await delivered(harness, imagine(harness, user_id=OTHER_ID))  # the budget is spent; a hit is free
    assert await counter(harness, "guild_day_fen", str(harness.discord.guild_id)) == 18
    refused = await refusal(harness, imagine(harness, "Something new", user_id=OTHER_ID))
    assert "budget" in refused
    assert harness.api.generation_count == 1


# -- a miss ---------------------------------------------------------------------------------------------------


async def test_another_size_is_a_new_picture(harness: BotHarness) -> None:
    await harness.start()
    await delivered(harness, imagine(harness))
    wide = await delivered(harness, imagine(harness, options={"size": "1664*928"}))
    assert png_size(wide.attachments[0]["bytes"]) == (1664, 928)
    assert "From cache" not in fields(wide)
    assert harness.api.generation_count == 2


# -- identical requests at once -------------------------------------------------------------------------------


async def test_five_identical_requests_at_once_make_one_upstream_call(harness: BotHarness) -> None:
    await harness.start()
    harness.api.latency_s = 0.5
    users = [USER_ID + i for i in range(5)]
    sent = [imagine(harness, user_id=u) for u in users]
    messages = [await harness.result(s) for s in sent]
    assert harness.api.generation_count == 1 and len(harness.api.requests) == 1
    assert len({m.id for m in messages}) == 5  # each requester's own reply, edited with the image
    assert len({m.attachments[0]["bytes"] for m in messages}) == 1
    assert [m.attachments[0]["filename"] for m in messages] == [f"imagine-{s.id}.png" for s in sent]
    jobs = [await harness.job(s.id) for s in sent]
    assert sorted((j.cost_fen, j.cache_hit) for j in jobs) == [(0, True)] * 4 + [(18, False)]
    assert sum("From cache" in fields(m) for m in messages) == 4
    assert await counter(harness, "guild_day_fen", str(harness.discord.guild_id)) == 18


async def test_when_the_shared_call_fails_every_requester_is_told_the_same_and_nothing_is_charged(
    harness: BotHarness,
) -> None:
    await harness.start(upstream_max_retries=0)
    harness.api.script(Reply.error(500, delay=0.5))
    sent = [imagine(harness, user_id=USER_ID + i) for i in range(5)]
    replies = [await harness.reply(s, lambda m: m.content.startswith("❌")) for s in sent]
    assert len(harness.api.requests) == 1
    assert len({m.content for m in replies}) == 1 and all(not m.attachments for m in replies)
    assert harness.api.requests[0].request_id in replies[0].content
    jobs = [await harness.job(s.id) for s in sent]
    assert [(j.state, j.cost_fen) for j in jobs] == [("failed", 0)] * 5
    assert await rows(harness, "SELECT * FROM quota_counters WHERE used > 0 AND scope != 'cooldown'") == []


async def test_a_double_click_is_not_refused_by_the_daily_limit(harness: BotHarness) -> None:
    await harness.start(user_daily_limit=1)
    harness.api.latency_s = 0.5
    first, again = imagine(harness), imagine(harness)  # the same member, the same request, while it generates
    await delivered(harness, first)
    outcome = await settled(harness, again)  # free: a moment later it would be an ordinary cache hit
    assert isinstance(outcome, FakeMessage), f"refused: {outcome}"
    assert "From cache" in fields(outcome)
    assert harness.api.generation_count == 1


# -- reroll ---------------------------------------------------------------------------------------------------


async def test_reroll_pays_for_a_new_image_even_though_the_request_is_cached(harness: BotHarness) -> None:
    await harness.start()
    first = imagine(harness)
    message = await delivered(harness, first)
    assert "From cache" in fields(await delivered(harness, imagine(harness, user_id=OTHER_ID)))  # cached
    reroll = harness.discord.click(message.id, f"imagine:reroll:{first.id}", user_id=USER_ID)
    rerolled = await delivered(harness, reroll)
    assert harness.api.generation_count == 2
    assert harness.api.requests[1].json["prompt"] == PROMPT
    assert "From cache" not in fields(rerolled)
    job = await harness.job(reroll.id)
    assert (job.cache_hit, job.cost_fen, job.reroll_of) == (False, 18, first.id)


# -- a guild turns it off -------------------------------------------------------------------------------------


async def test_a_guild_that_turns_the_cache_off_pays_each_time_and_another_guild_keeps_it(
    harness: BotHarness,
) -> None:
    elsewhere = harness.discord.add_guild(FakeGuild(name="Elsewhere"))
    await harness.start()
    assert await cache_admin(harness, enabled=False) == f"<@{ADMIN_ID}> turned the image cache off."
    for _ in range(2):
        assert "From cache" not in fields(await delivered(harness, imagine(harness)))
    assert harness.api.generation_count == 2
    there = [await delivered(harness, imagine(harness, guild_id=elsewhere.id)) for _ in range(2)]
    assert ["From cache" in fields(m) for m in there] == [False, True]
    assert harness.api.generation_count == 3


async def test_the_cache_can_be_turned_back_on(harness: BotHarness) -> None:
    await harness.start()
    await cache_admin(harness, enabled=False)
    await delivered(harness, imagine(harness))
    said = await cache_admin(harness, enabled=True, counts_toward_limits=False)
    assert said == (f"<@{ADMIN_ID}> turned the image cache on and made cached images not count toward image limits.")
    await delivered(harness, imagine(harness))  # generated: nothing was cached while it was off
    assert "From cache" in fields(await delivered(harness, imagine(harness)))
    assert harness.api.generation_count == 2


async def test_only_admins_can_change_the_cache_setting(harness: BotHarness) -> None:
    await harness.start()
    sent = harness.slash("imagine-admin", {"enabled": False}, subcommand="cache", user_id=USER_ID, permissions="0")
    message = await harness.reply(sent, lambda m: bool(m.content))
    assert (message.content, message.ephemeral) == (NO_PERMISSION, True)
    assert await rows(harness, "SELECT * FROM guild_settings") == []
    await delivered(harness, imagine(harness))
    assert "From cache" in fields(await delivered(harness, imagine(harness)))


async def test_the_cache_command_needs_an_option(harness: BotHarness) -> None:
    await harness.start()
    assert await cache_admin(harness) == "Nothing to change: give at least one option."
    assert await rows(harness, "SELECT * FROM guild_settings") == []


# -- the ledger -----------------------------------------------------------------------------------------------


async def test_the_export_shows_the_hit_at_zero_cost(harness: BotHarness) -> None:
    await harness.start()
    first, hit = imagine(harness), imagine(harness, user_id=OTHER_ID)
    await delivered(harness, first)
    await delivered(harness, hit)
    sent = harness.slash("imagine-admin", {}, subcommand="export", user_id=ADMIN_ID, permissions=ADMIN_PERMISSIONS)
    answer = await harness.reply(sent, lambda m: bool(m.attachments))
    exported = list(csv.DictReader(io.StringIO(answer.attachments[0]["bytes"].decode("utf-8"))))
    assert [
        (r["job_id"], r["user_id"], r["state"], r["cost_cny"], r["upstream_cny"], r["cache_hit"]) for r in exported
    ] == [
        (str(first.id), str(USER_ID), "delivered", "0.18", "0.18", "no"),
        (str(hit.id), str(OTHER_ID), "delivered", "0.00", "0.00", "yes"),
    ]


async def test_the_report_counts_the_hit_as_an_image_that_cost_nothing(harness: BotHarness) -> None:
    await harness.start()
    await delivered(harness, imagine(harness))
    await delivered(harness, imagine(harness, user_id=OTHER_ID))
    sent = harness.slash("imagine-admin", {}, subcommand="report", user_id=ADMIN_ID, permissions=ADMIN_PERMISSIONS)
    message = await harness.reply(sent, lambda m: bool(m.embeds))
    report = fields(message)
    assert (report["Images"], report["Spent"]) == ("2", "¥0.18")
    assert report["Top users"] == f"<@{USER_ID}>: 1 image(s), ¥0.18\n<@{OTHER_ID}>: 1 image(s), ¥0.00"
