"""Cancel, Remix and "Imagine this" (issue 12) end to end: the real ImagineBot against the fake
Discord and the fake image API, on SQLite and on PostgreSQL (where the queue is the shared one)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.discord.conftest import BotHarness
from tests.fakes.fake_discord import FakeMessage, SentInteraction
from tests.fakes.image_api import Reply

pytestmark = pytest.mark.both_backends

FIRST_USER = 3 * 10**17
NO_PINGS = {"parse": []}
EPHEMERAL = 64
MANAGE_MESSAGES = 1 << 13
MODERATOR = str((1 << 10) | (1 << 11) | MANAGE_MESSAGES)  # view channel, send messages, manage messages


def user(n: int) -> int:
    return FIRST_USER + n


def imagine(harness: BotHarness, prompt: str, *, user_id: int, **kw: Any) -> SentInteraction:
    return harness.slash("imagine", {"prompt": prompt}, user_id=user_id, **kw)


async def queued_with_cancel(harness: BotHarness, sent: SentInteraction) -> FakeMessage:
    """The reply once it shows the job's place in the queue with its Cancel button."""
    button = f"imagine:cancel:{sent.id}"
    return await harness.reply(sent, lambda m: "Queued" in m.content and button in m.custom_ids())


async def upstream_requests(harness: BotHarness, n: int) -> None:
    await harness.discord.wait_for(lambda _: len(harness.api.requests) >= n, timeout=15)


def upstream_prompts(harness: BotHarness) -> list[str]:
    return [r.json["prompt"] for r in harness.api.requests]


async def counter(harness: BotHarness, scope: str, subject: str) -> int:
    assert harness.bot is not None and harness.bot.pipeline is not None
    row = await harness.bot.pipeline.store.fetch_one(
        "SELECT SUM(used) AS used FROM quota_counters WHERE scope = ? AND subject = ?", (scope, subject)
    )
    return int(row["used"] or 0) if row else 0


async def private_followup(harness: BotHarness, sent: SentInteraction) -> FakeMessage:
    """A button's answer sent after its deferral: a private followup."""
    [message] = await harness.discord.wait_for(lambda f: f.followups(sent.id) or None, timeout=10)
    assert message.ephemeral and message.allowed_mentions in (None, NO_PINGS)
    return message


# -- 1. Cancel ----------------------------------------------------------------------------------------


async def test_cancel_while_queued_refunds_the_reservation_and_never_sends_it(harness: BotHarness) -> None:
    harness.api.script(Reply.ok(delay=1.0))
    await harness.start(upstream_concurrency=1)
    first = imagine(harness, "the first", user_id=user(0))
    await upstream_requests(harness, 1)
    second = imagine(harness, "never sent", user_id=user(1))
    message = await queued_with_cancel(harness, second)
    member, guild = f"{harness.discord.guild_id}:{user(1)}", str(harness.discord.guild_id)
    assert await counter(harness, "user_day", member) == 1  # reserved at admission
    assert await counter(harness, "guild_day_fen", guild) == 36  # both jobs' money

    click = harness.discord.click(message.id, f"imagine:cancel:{second.id}", user_id=user(1))

    cancelled = await harness.reply(second, lambda m: "Cancelled" in m.content)
    assert cancelled.custom_ids() == []  # the button is gone with the queue place
    assert "never sent" in cancelled.content and cancelled.allowed_mentions == NO_PINGS
    assert harness.discord.callbacks(click.id) == [6]  # a silent acknowledgement, no second message
    assert harness.discord.followups(click.id) == []
    job = await harness.job(second.id)
    assert (job.state, job.error_code, job.cost_fen, job.interaction_token) == ("failed", "Cancelled", 0, None)
    assert await counter(harness, "user_day", member) == 0  # refunded
    assert await counter(harness, "guild_day_fen", guild) == 18  # only the first job's

    await harness.result(first)
    assert upstream_prompts(harness) == ["the first"]  # the cancelled job never went upstream
    await asyncio.sleep(0.3)  # a late queue-position edit would bring the button back: none comes
    final = harness.discord.original_message(second.id)
    assert final is not None and "Cancelled" in final.content and final.custom_ids() == []
    assert await counter(harness, "guild_day_fen", guild) == 18


async def test_cancel_after_the_request_was_sent_is_refused_politely(harness: BotHarness) -> None:
    harness.api.script(Reply.ok(delay=0.5), Reply.ok(delay=1.0))
    await harness.start(upstream_concurrency=1)
    imagine(harness, "the first", user_id=user(0))
    await upstream_requests(harness, 1)
    second = imagine(harness, "already sent", user_id=user(1))
    message = await queued_with_cancel(harness, second)
    # The user's screen still shows the Cancel button when the job is sent: its "Generating…" edit
    # is lost here, as a slow client would show the old message a moment longer.
    harness.discord.fail_next("PATCH", rf"/webhooks/\d+/{second.token}/messages/", 500, times=1)
    await upstream_requests(harness, 2)

    click = harness.discord.click(message.id, f"imagine:cancel:{second.id}", user_id=user(1))

    answer = await private_followup(harness, click)
    assert (
        answer.content == "Too late to cancel: this request has already gone to the image service, so it will finish."
    )
    result = await harness.result(second)
    assert "Cancelled" not in (result.content or "")
    job = await harness.job(second.id)
    assert (job.state, job.cost_fen) == ("delivered", 18)
    assert upstream_prompts(harness) == ["the first", "already sent"]


async def test_only_the_requester_or_a_moderator_may_cancel(harness: BotHarness) -> None:
    harness.api.script(Reply.ok(delay=1.0))
    await harness.start(upstream_concurrency=1)
    first = imagine(harness, "the first", user_id=user(0))
    await upstream_requests(harness, 1)
    second = imagine(harness, "someone's request", user_id=user(1))
    message = await queued_with_cancel(harness, second)

    stranger = harness.discord.click(
        message.id, f"imagine:cancel:{second.id}", user_id=user(2), permissions=str(1 << 10 | 1 << 11)
    )
    await harness.discord.wait_for(lambda f: f.callbacks(stranger.id) or None)
    assert harness.discord.callbacks(stranger.id) == [4]
    [payload] = harness.discord.callback_payloads(stranger.id)
    assert payload["data"]["flags"] == EPHEMERAL
    assert payload["data"]["content"].startswith("Only the person who asked")
    assert (await harness.bot.service.jobs.get(second.id)).state == "queued"  # type: ignore[union-attr]

    harness.discord.click(message.id, f"imagine:cancel:{second.id}", user_id=user(3), permissions=MODERATOR)
    await harness.reply(second, lambda m: "Cancelled" in m.content)
    await harness.result(first)
    assert upstream_prompts(harness) == ["the first"]


async def test_a_race_between_cancels_and_the_dispatcher_has_exactly_one_winner_per_job(harness: BotHarness) -> None:
    harness.api.latency_s = 0.05
    await harness.start(upstream_concurrency=1)
    assert harness.bot is not None
    sent = [imagine(harness, f"race {n}", user_id=user(n)) for n in range(6)]
    for each in sent:  # every job admitted (its row written) before the cancels fire
        await harness.discord.wait_for(lambda f, each=each: f.callbacks(each.id) or None)
        await harness.job(each.id, states=("queued", "submitting", "generated", "delivered"))

    outcomes = await asyncio.gather(*(harness.bot.service.cancel(each.id) for each in sent))

    guild = harness.discord.guild_id
    sent_upstream = upstream_prompts
    for each, outcome in zip(sent, outcomes, strict=True):
        job = await harness.job(each.id)
        member = f"{guild}:{each.user_id}"
        if outcome == "cancelled":
            assert (job.state, job.error_code, job.cost_fen) == ("failed", "Cancelled", 0)
            assert await counter(harness, "user_day", member) == 0
        else:
            assert outcome in ("started", "finished"), outcome
            assert (job.state, job.cost_fen) == ("delivered", 18)
            assert await counter(harness, "user_day", member) == 1
    delivered = [f"race {n}" for n, o in enumerate(outcomes) if o != "cancelled"]
    assert sorted(sent_upstream(harness)) == sorted(delivered)  # a cancelled job never went upstream
    assert "cancelled" in outcomes  # with one upstream slot, most of them were still waiting
    assert await counter(harness, "guild_day_fen", str(guild)) == 18 * len(delivered)


# -- 2. Remix -----------------------------------------------------------------------------------------


def modal_of(harness: BotHarness, click: SentInteraction) -> dict[str, Any]:
    """The modal a click opened (callback type 9): its custom_id and {input custom_id: input}."""
    assert harness.discord.callbacks(click.id) == [9]
    [payload] = harness.discord.callback_payloads(click.id)
    data = payload["data"]
    inputs = {c["custom_id"]: c for row in data["components"] for c in row["components"]}
    return {"custom_id": data["custom_id"], "title": data["title"], "inputs": inputs}


async def open_remix(harness: BotHarness, message: FakeMessage, job_id: int, user_id: int) -> dict[str, Any]:
    click = harness.discord.click(message.id, f"imagine:remix:{job_id}", user_id=user_id)
    await harness.discord.wait_for(lambda f: f.callbacks(click.id) or None)
    return modal_of(harness, click)


async def test_a_remix_opens_a_prefilled_form_and_delivers_a_new_image_as_a_new_message(harness: BotHarness) -> None:
    await harness.start()
    sent = harness.slash(
        "imagine",
        {"prompt": "A cute orange kitten", "negative_prompt": "dogs", "size": "1664*928", "watermark": False},
        user_id=user(0),
    )
    message = await harness.result(sent)
    assert f"imagine:remix:{sent.id}" in message.custom_ids()

    modal = await open_remix(harness, message, sent.id, user(1))
    assert modal["title"] == "Remix this image"
    prompt, negative = modal["inputs"]["prompt"], modal["inputs"]["negative_prompt"]
    assert (prompt["value"], prompt["max_length"], prompt["required"]) == ("A cute orange kitten", 800, True)
    assert (negative["value"], negative["max_length"], negative["required"]) == ("dogs", 500, False)

    submitted = harness.discord.submit_modal(
        modal["custom_id"],
        {"prompt": "A cute grey kitten @everyone", "negative_prompt": "cats"},
        message_id=message.id,
        user_id=user(1),
    )
    remixed = await harness.result(submitted)
    assert remixed.id != message.id  # a new message; the original result is untouched
    assert harness.discord.callbacks(submitted.id)[0] == 5 and not remixed.ephemeral
    assert remixed.allowed_mentions == NO_PINGS
    job = await harness.job(submitted.id)
    assert (job.command, job.prompt, job.negative_prompt) == ("remix", "A cute grey kitten @everyone", "cats")
    assert (job.size, job.watermark, job.user_id, job.cost_fen) == ("1664*928", False, user(1), 18)
    sent_upstream = harness.api.requests[-1].json
    assert sent_upstream["prompt"] == "A cute grey kitten @everyone"
    assert sent_upstream["parameters"]["size"] == "1664*928"
    assert sent_upstream["parameters"]["negative_prompt"] == "cats"
    assert f"imagine:remix:{submitted.id}" in remixed.custom_ids()  # a remix can be remixed again


async def test_a_poster_remix_edits_its_title_and_keeps_its_style(harness: BotHarness) -> None:
    await harness.start()
    sent = harness.slash("poster", {"title": "Spring Sale", "subtitle": "All week", "style": "text-poster"})
    message = await harness.result(sent)
    modal = await open_remix(harness, message, sent.id, sent.user_id)
    assert {name: i.get("value") for name, i in modal["inputs"].items()} == {
        "title": "Spring Sale",
        "subtitle": "All week",
        "background": None,
    }
    submitted = harness.discord.submit_modal(
        modal["custom_id"], {"title": "Summer Sale", "subtitle": "", "background": ""}, user_id=sent.user_id
    )
    await harness.result(submitted)
    job = await harness.job(submitted.id)
    assert job.inputs == {"title": "Summer Sale"} and job.style == "text-poster" and job.size == "928*1664"
    assert "Summer Sale" in job.prompt and "Spring Sale" not in job.prompt


async def test_a_remix_is_held_to_the_same_limits_and_rules_as_a_command(harness: BotHarness) -> None:
    await harness.start(user_daily_limit=1)
    sent = imagine(harness, "A cute orange kitten", user_id=user(0))
    message = await harness.result(sent)
    modal = await open_remix(harness, message, sent.id, user(0))
    submitted = harness.discord.submit_modal(
        modal["custom_id"], {"prompt": "again", "negative_prompt": ""}, user_id=user(0)
    )
    await harness.discord.wait_for(lambda f: f.callbacks(submitted.id) or None)
    assert harness.discord.callbacks(submitted.id) == [4]  # refused privately, before any acknowledgement
    [payload] = harness.discord.callback_payloads(submitted.id)
    assert payload["data"]["flags"] == EPHEMERAL
    assert payload["data"]["content"].startswith("You have used your 1 image(s)")
    assert await harness.bot.service.jobs.get(submitted.id) is None  # type: ignore[union-attr]
    assert len(harness.api.requests) == 1


# -- 3. "Imagine this" ---------------------------------------------------------------------------------


async def test_imagine_this_draws_the_message_text_with_mentions_as_plain_names(harness: BotHarness) -> None:
    await harness.start()
    author, mentioned = user(0), user(1)
    sent = harness.discord.send_message_command(
        "Imagine this",
        f"<@{mentioned}> a red fox in the snow @everyone",
        author_id=author,
        mentions=[mentioned],
        user_id=user(2),
    )
    message = await harness.result(sent)
    assert harness.discord.callbacks(sent.id)[0] == 5  # a public "thinking…", as a slash command
    job = await harness.job(sent.id)
    assert job.command == "imagine_this" and job.user_id == user(2)
    assert f"<@{mentioned}>" not in job.prompt and f"user{mentioned}" in job.prompt
    assert "a red fox in the snow" in job.prompt
    assert harness.api.requests[0].json["prompt"] == job.prompt
    # nothing pings: every message the bot wrote or edited for it allows no mention
    assert message.allowed_mentions == NO_PINGS
    assert all(h["payload"].get("allowed_mentions") in (None, NO_PINGS) for h in message.history)


async def test_imagine_this_on_a_message_without_text_is_refused_privately(harness: BotHarness) -> None:
    await harness.start()
    sent = harness.discord.send_message_command("Imagine this", "", author_id=user(0), attachments=["cat.png"])
    await harness.discord.wait_for(lambda f: f.callbacks(sent.id) or None)
    assert harness.discord.callbacks(sent.id) == [4]
    [payload] = harness.discord.callback_payloads(sent.id)
    assert payload["data"]["flags"] == EPHEMERAL
    assert payload["data"]["content"].startswith("That message has no text to make an image from")
    assert await harness.bot.service.jobs.get(sent.id) is None  # type: ignore[union-attr]
    assert harness.api.requests == []


async def test_imagine_this_is_screened_by_the_prompt_rules(harness: BotHarness) -> None:
    await harness.start()
    assert harness.bot is not None and harness.bot.pipeline is not None
    await harness.bot.pipeline.admin.add_rule(harness.discord.guild_id, user(9), "word", "forbidden", "no")
    sent = harness.discord.send_message_command("Imagine this", "a forbidden thing", author_id=user(0))
    await harness.discord.wait_for(lambda f: f.callbacks(sent.id) or None)
    assert harness.discord.callbacks(sent.id) == [4]
    [payload] = harness.discord.callback_payloads(sent.id)
    assert payload["data"]["flags"] == EPHEMERAL
    assert await harness.bot.service.jobs.get(sent.id) is None
    assert harness.api.requests == []
