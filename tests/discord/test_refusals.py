"""Issue 8.1: a refusal always reaches the user, privately, as the interaction's one and only
response (callback type 4, flag 64), and never leaves a public trace. Only an accepted job is
deferred publicly. The fake Discord follows the documented followup-after-defer behaviour, so a
bot that defers first and refuses afterwards fails these tests (the user would see nothing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.discord.conftest import BotHarness, private_refusal
from tests.fakes.image_api import Reply

pytestmark = pytest.mark.both_backends

USER_ID = 910_001
ADMIN_ID = 910_002
NOON_UTC = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
NEXT_UTC_MIDNIGHT = int(datetime(2026, 3, 11, tzinfo=UTC).timestamp())


def no_public_message(harness: BotHarness) -> bool:
    """Nothing public was ever created in any channel (deleted or not)."""
    return all(m.ephemeral for m in harness.discord.messages.values())


async def test_a_user_over_the_daily_limit_is_told_privately_with_the_reset_time(harness: BotHarness) -> None:
    await harness.start(wall_clock=lambda: NOON_UTC, user_daily_limit=1)
    first = harness.slash("imagine", {"prompt": "a first lighthouse"}, user_id=USER_ID)
    await harness.result(first)
    second = harness.slash("imagine", {"prompt": "a second lighthouse"}, user_id=USER_ID)
    text = await private_refusal(harness, second)
    assert text == f"You have used your 1 image(s) for today; your limit resets <t:{NEXT_UTC_MIDNIGHT}:R>."
    assert len(harness.api.requests) == 1
    assert [m for m in harness.discord.messages.values() if not m.ephemeral and m.interaction_id == second.id] == []


async def test_a_prompt_refused_by_a_rule_is_told_privately_and_nothing_public_appears(harness: BotHarness) -> None:
    await harness.start()
    assert harness.bot is not None and harness.bot.pipeline is not None
    await harness.bot.pipeline.admin.add_rule(harness.discord.guild_id, ADMIN_ID, "word", "secret", "no secrets")
    sent = harness.slash("imagine", {"prompt": "a SECRET plan"}, user_id=USER_ID)
    assert await private_refusal(harness, sent) == "This server does not allow that request: no secrets."
    assert no_public_message(harness)
    assert harness.api.requests == []


async def test_a_full_queue_is_told_privately(harness: BotHarness) -> None:
    await harness.start(guild_queue_max=1, upstream_concurrency=1)
    harness.api.script(Reply.ok(delay=2.0), Reply.ok(delay=2.0))
    running = harness.slash("imagine", {"prompt": "one"}, user_id=USER_ID)
    await harness.discord.wait_for(lambda f: harness.api.requests)
    waiting = harness.slash("imagine", {"prompt": "two"}, user_id=USER_ID + 1)
    await harness.reply(waiting, lambda m: "Queued" in m.content)
    refused = harness.slash("imagine", {"prompt": "three"}, user_id=USER_ID + 2)
    text = await private_refusal(harness, refused)
    assert text.startswith("This server's queue is full (1 waiting). Try again in about ")
    assert harness.discord.callbacks(running.id) == [5] and harness.discord.callbacks(waiting.id) == [5]


async def test_a_cooldown_refusal_is_private_and_says_when(harness: BotHarness) -> None:
    await harness.start(cooldown_seconds=600)
    first = harness.slash("imagine", {"prompt": "a first kite"}, user_id=USER_ID)
    await harness.result(first)
    second = harness.slash("imagine", {"prompt": "a second kite"}, user_id=USER_ID)
    text = await private_refusal(harness, second)
    assert text.startswith("Slow down: one image every 600 s here. Try again <t:")


async def test_a_blocked_user_is_told_privately(harness: BotHarness) -> None:
    await harness.start()
    assert harness.bot is not None and harness.bot.pipeline is not None
    admin = harness.bot.pipeline.admin
    await admin.block(harness.discord.guild_id, ADMIN_ID, USER_ID, "spamming", timedelta(hours=1))
    sent = harness.slash("imagine", {"prompt": "anything"}, user_id=USER_ID)
    assert (await private_refusal(harness, sent)).startswith("You are blocked from generating images here until")
    assert no_public_message(harness)


async def test_a_reroll_over_the_limit_is_refused_privately_on_the_click(harness: BotHarness) -> None:
    await harness.start(wall_clock=lambda: NOON_UTC, user_daily_limit=1)
    first = harness.slash("imagine", {"prompt": "a dune"}, user_id=USER_ID)
    message = await harness.result(first)
    click = harness.discord.click(message.id, f"imagine:reroll:{first.id}", user_id=USER_ID)
    assert (await private_refusal(harness, click)).startswith("You have used your 1 image(s) for today")
    assert len(harness.api.requests) == 1
    assert harness.discord.message(message.id).attachments  # the original result is untouched


async def test_an_accepted_job_is_deferred_publicly_and_edited_in_place(harness: BotHarness) -> None:
    await harness.start()
    sent = harness.slash("imagine", {"prompt": "a quiet harbour"}, user_id=USER_ID)
    message = await harness.result(sent)
    assert harness.discord.callbacks(sent.id) == [5]
    assert not message.ephemeral and harness.discord.followups(sent.id) == []


async def test_a_failure_after_acceptance_edits_the_public_message(harness: BotHarness) -> None:
    await harness.start(upstream_max_retries=0)
    harness.api.script(Reply.content_rejected())
    sent = harness.slash("imagine", {"prompt": "a harbour"}, user_id=USER_ID)
    message = await harness.reply(sent, lambda m: "refused" in m.content)
    assert harness.discord.callbacks(sent.id) == [5] and not message.ephemeral
    assert (await harness.job(sent.id)).cost_fen == 0
