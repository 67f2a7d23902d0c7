"""Buttons, durability and delivery fallbacks, end to end: the real ImagineBot (discord.py) against the
fake Discord and the fake image API, with a real SQLite file.

What is checked is what the fakes recorded: the messages, their edits and attachments, the REST
requests, the upstream requests and downloads, and the job rows in the store.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from bot.logsetup import SecretScrubber
from bot.storage.db import iso
from tests.conftest import TEST_API_KEY
from tests.discord.conftest import BotHarness
from tests.fakes.fake_discord import DEFAULT_PERMISSIONS, FakeDiscord, FakeMessage, SentInteraction
from tests.fakes.image_api import Reply
from tests.fakes.png import png_size

MANAGE_MESSAGES = 1 << 13
NO_MANAGE_MESSAGES = str(int(DEFAULT_PERMISSIONS) & ~MANAGE_MESSAGES)
MODERATOR = str((1 << 10) | (1 << 11) | MANAGE_MESSAGES)  # view channel, send messages, manage messages
OTHER_USER = 424242424242424242
PRICE_FEN = 18
NOT_ALLOWED_TO_DELETE = "Only the person who asked for this image, or someone with Manage Messages, can delete it."
WEBHOOK_EDIT = r"/webhooks/\d+/[^/]+/messages/"


# -- helpers -----------------------------------------------------------------------------------------
def image_edits(message: FakeMessage) -> list[dict]:
    """The edits of a message that uploaded a file (the final edit with the image)."""
    return [entry for entry in message.history if entry["op"] == "edit" and entry["files"]]


def buttons(job_id: int) -> list[str]:
    return [
        f"imagine:reroll:{job_id}",
        f"imagine:remix:{job_id}",
        f"imagine:details:{job_id}",
        f"imagine:delete:{job_id}",
    ]


def fields_of(embed: dict) -> dict[str, str]:
    return {field["name"]: field["value"] for field in embed.get("fields", [])}


async def answer_to(fake: FakeDiscord, click: SentInteraction) -> FakeMessage:
    """The message a component interaction answered with (callback 4: a new message)."""
    return await fake.wait_for(lambda f: f.original_message(click.id), timeout=15)


async def generating(harness: BotHarness, sent: SentInteraction) -> FakeMessage:
    """Wait until the reply shows "Generating…": no status edit is left, only the final one."""
    return await harness.reply(sent, lambda m: "Generating" in m.content)


def second_channel(harness: BotHarness) -> int:
    """Not the guild's first channel: a post in the wrong channel must not pass by chance."""
    return harness.discord.guilds[0].channel_ids[1]


def posted_in_channel(fake: FakeDiscord, channel_id: int) -> list[FakeMessage]:
    """Messages the bot posted itself in the channel (not interaction replies)."""
    return [m for m in fake.channel_messages(channel_id) if not m.webhook]


async def rows(harness: BotHarness) -> list[dict]:
    assert harness.bot is not None
    found = await harness.bot.pipeline.store.fetch_all("SELECT * FROM jobs ORDER BY id")
    return [dict(zip(row.keys(), tuple(row), strict=True)) for row in found]


async def delivered_image(harness: BotHarness, prompt: str = "A lighthouse at dusk", **kw) -> tuple:
    sent = harness.slash("imagine", {"prompt": prompt}, **kw)
    return sent, await harness.result(sent)


# -- 1. the buttons ----------------------------------------------------------------------------------
async def test_reroll_is_a_new_job_with_the_same_parameters_in_a_new_message_charged_again(
    harness: BotHarness,
) -> None:
    await harness.start()
    options = {
        "prompt": "A lighthouse at dusk",
        "style": "photo",
        "negative_prompt": "fog",
        "watermark": True,
    }
    sent = harness.slash("imagine", options)
    first = await harness.result(sent)

    click = harness.discord.click(first.id, f"imagine:reroll:{sent.id}", user_id=sent.user_id)
    second = await harness.result(click)

    assert second.id != first.id and second.channel_id == first.channel_id
    assert harness.discord.callbacks(click.id) == [5]  # a new public "thinking…" message
    [attachment] = second.attachments
    assert attachment["filename"] == f"imagine-{click.id}.png"
    assert png_size(attachment["bytes"]) == (1664, 928)
    assert second.custom_ids() == buttons(click.id)
    assert len(image_edits(harness.discord.message(first.id))) == 1  # the first image is untouched
    original, reroll = await harness.job(sent.id), await harness.job(click.id)
    assert reroll.reroll_of == sent.id and reroll.command == "reroll"
    for name in ("prompt", "size", "negative_prompt", "prompt_extend", "watermark", "style", "model"):
        assert getattr(reroll, name) == getattr(original, name), name
    ledger = await rows(harness)
    assert [(r["id"], r["state"], r["cost_fen"]) for r in ledger] == [
        (sent.id, "delivered", PRICE_FEN),
        (click.id, "delivered", PRICE_FEN),
    ]
    assert sum(r["cost_fen"] for r in ledger) == 36
    first_request, second_request = (r.json for r in harness.api.requests)
    assert first_request == second_request  # the same parameters went upstream
    assert harness.api.generation_count == 2


async def test_details_answers_privately_with_every_parameter_and_the_request_id(harness: BotHarness) -> None:
    await harness.start()
    harness.api.script(Reply.ok(revised_prompt="A red lighthouse on a cliff at dusk"))
    options = {
        "prompt": "A lighthouse at dusk",
        "style": "photo",
        "negative_prompt": "fog",
        "watermark": True,
    }
    sent = harness.slash("imagine", options)
    message = await harness.result(sent)
    await harness.job(sent.id)  # recorded as delivered just after the image is shown

    click = harness.discord.click(message.id, f"imagine:details:{sent.id}", user_id=sent.user_id)
    details = await answer_to(harness.discord, click)

    assert harness.discord.callbacks(click.id) == [4]
    assert details.ephemeral and details.id != message.id
    [embed] = details.embeds
    assert embed["title"] == f"Details of job {sent.id}"
    fields = fields_of(embed)
    [upstream] = harness.api.requests
    assert fields["Request id"] == f"`{upstream.request_id}`"
    assert fields["Prompt"] == "A lighthouse at dusk"
    assert fields["Negative prompt"] == "fog"
    assert fields["Revised prompt"] == "A red lighthouse on a cliff at dusk"
    assert fields["Command"] == "/imagine"
    # each value says where it came from (issue 12): the option given, else the style's
    assert fields["Style"] == "photo (your option)"
    assert fields["Size"] == "16:9 widescreen 1664×928 (the style)"
    assert (fields["Prompt extend"], fields["Watermark"]) == ("off (the style)", "on (your option)")
    assert fields["Private"] == "off (server default)"
    assert fields["Model"] == "qwen-image-plus"
    assert (fields["State"], fields["Cost"]) == ("delivered", "¥0.18")
    assert details.allowed_mentions == {"parse": []}
    assert harness.discord.message(message.id).edits == message.edits  # the image is not touched


async def test_delete_by_the_requester_deletes_the_message(harness: BotHarness) -> None:
    await harness.start()
    sent, message = await delivered_image(harness)

    harness.discord.click(message.id, f"imagine:delete:{sent.id}", user_id=sent.user_id, permissions=NO_MANAGE_MESSAGES)

    await harness.discord.wait_for(lambda f: f.message(message.id).deleted)
    assert harness.discord.message(message.id).history[-1]["op"] == "delete"


async def test_delete_by_someone_else_without_manage_messages_is_refused_privately(
    harness: BotHarness,
) -> None:
    await harness.start()
    sent, message = await delivered_image(harness)

    click = harness.discord.click(
        message.id, f"imagine:delete:{sent.id}", user_id=OTHER_USER, permissions=NO_MANAGE_MESSAGES
    )
    refusal = await answer_to(harness.discord, click)

    assert refusal.ephemeral
    assert refusal.content == NOT_ALLOWED_TO_DELETE
    assert not harness.discord.message(message.id).deleted
    assert harness.discord.requests_to("DELETE", rf"/messages/({message.id}|@original)") == []


async def test_delete_by_someone_else_with_manage_messages_deletes_the_message(harness: BotHarness) -> None:
    await harness.start()
    sent, message = await delivered_image(harness)

    harness.discord.click(message.id, f"imagine:delete:{sent.id}", user_id=OTHER_USER, permissions=MODERATOR)

    await harness.discord.wait_for(lambda f: f.message(message.id).deleted)


# -- 2. buttons after a restart ------------------------------------------------------------------------
async def test_reroll_and_details_work_on_an_old_message_after_a_restart(harness: BotHarness) -> None:
    await harness.start()
    sent, message = await delivered_image(harness)
    [upstream] = harness.api.requests
    await harness.stop()
    await harness.start()  # a new process would see the same: the same database, nothing in memory

    details_click = harness.discord.click(message.id, f"imagine:details:{sent.id}", user_id=sent.user_id)
    details = await answer_to(harness.discord, details_click)
    reroll_click = harness.discord.click(message.id, f"imagine:reroll:{sent.id}", user_id=sent.user_id)
    rerolled = await harness.result(reroll_click)

    assert details.ephemeral
    assert fields_of(details.embeds[0])["Request id"] == f"`{upstream.request_id}`"
    assert rerolled.id != message.id and rerolled.custom_ids() == buttons(reroll_click.id)
    reroll = await harness.job(reroll_click.id)
    assert (reroll.state, reroll.reroll_of, reroll.prompt) == ("delivered", sent.id, "A lighthouse at dusk")
    assert harness.api.generation_count == 2


# -- 4. an expired token: the image goes to the channel ----------------------------------------------
def assert_posted_for_requester(message: FakeMessage, sent: SentInteraction) -> None:
    assert message.channel_id == sent.channel_id
    assert f"<@{sent.user_id}>" in message.content
    mentions = message.allowed_mentions or {}
    assert mentions.get("parse") == []
    assert [str(user) for user in mentions.get("users", [])] == [str(sent.user_id)]
    assert not mentions.get("roles") and not mentions.get("replied_user")
    [attachment] = message.attachments
    assert attachment["filename"] == f"imagine-{sent.id}.png"
    assert png_size(attachment["bytes"]) == (1328, 1328)
    [embed] = message.embeds
    assert embed["image"]["url"] == f"attachment://imagine-{sent.id}.png"
    assert message.custom_ids() == buttons(sent.id)
    assert message.nonce == str(sent.id)


async def test_an_expired_token_posts_the_image_in_the_channel_mentioning_the_requester(
    harness: BotHarness,
) -> None:
    harness.api.script(Reply.ok(delay=1.0))
    await harness.start()
    sent = harness.slash("imagine", {"prompt": "A lighthouse at dusk"}, channel_id=second_channel(harness))
    await generating(harness, sent)

    harness.discord.expire_token(sent.id)
    [posted] = await harness.discord.wait_for(
        lambda f: [m for m in posted_in_channel(f, sent.channel_id) if m.attachments], timeout=15
    )

    assert_posted_for_requester(posted, sent)
    refused = harness.discord.requests_to("PATCH", rf"/webhooks/\d+/{sent.token}/messages/")
    assert refused and refused[-1].status == 401 and refused[-1].files  # it tried the reply first
    assert not harness.discord.original_message(sent.id).attachments
    job = await harness.job(sent.id)
    assert (job.state, job.cost_fen, job.interaction_token) == ("delivered", PRICE_FEN, None)


async def test_a_token_near_its_15_minutes_is_not_used_the_image_goes_to_the_channel(
    harness: BotHarness,
) -> None:
    harness.api.script(Reply.ok(delay=1.0))
    await harness.start()
    sent = harness.slash("imagine", {"prompt": "A lighthouse at dusk"}, channel_id=second_channel(harness))
    await generating(harness, sent)
    # As if the job had waited ~15 minutes: its token expires in 10 s (the fake would still take it).
    soon = iso(datetime.now(UTC) + timedelta(seconds=10))
    await harness.bot.pipeline.store.write("UPDATE jobs SET token_expires_at = ? WHERE id = ?", (soon, sent.id))

    [posted] = await harness.discord.wait_for(
        lambda f: [m for m in posted_in_channel(f, sent.channel_id) if m.attachments], timeout=15
    )

    assert_posted_for_requester(posted, sent)
    with_image = [r for r in harness.discord.requests_to("PATCH", rf"/webhooks/\d+/{sent.token}/") if r.files]
    assert with_image == []  # the reply was not even tried
    job = await harness.job(sent.id)
    assert (job.state, job.cost_fen, job.interaction_token) == ("delivered", PRICE_FEN, None)


# -- 5. Discord-side failures: retried from the stored image, never regenerated ----------------------
@pytest.mark.parametrize(
    ("failures", "attempts"),
    [
        pytest.param([("fail", 500)], 2, id="500-retried"),
        pytest.param([("drop", None), ("drop", None)], 3, id="dropped-twice"),
    ],
)
async def test_a_failed_final_edit_is_retried_from_the_stored_image(
    harness: BotHarness, failures: list[tuple[str, int | None]], attempts: int
) -> None:
    harness.api.script(Reply.ok(delay=0.8))
    await harness.start()
    sent = harness.slash("imagine", {"prompt": "A lighthouse at dusk"})
    await generating(harness, sent)
    for kind, status in failures:
        if kind == "fail":
            harness.discord.fail_next("PATCH", WEBHOOK_EDIT, status=status, times=1)
        else:
            harness.discord.drop_next("PATCH", WEBHOOK_EDIT, times=1)

    message = await harness.result(sent)

    tried = [r for r in harness.discord.requests_to("PATCH", WEBHOOK_EDIT) if r.files]
    assert len(tried) == attempts
    assert [r.status for r in tried[:-1]] == [status or 0 for _, status in failures]
    assert len({tuple(r.files.values())[0] for r in tried}) == 1  # the same bytes every time
    assert len(image_edits(message)) == 1
    assert message.attachments[0]["bytes"] == tuple(tried[-1].files.values())[0]
    assert harness.api.generation_count == 1
    assert len(harness.api.downloads) == 1
    job = await harness.job(sent.id)
    assert (job.state, job.cost_fen, job.interaction_token) == ("delivered", PRICE_FEN, None)


async def test_a_forbidden_final_edit_fails_the_job_uncharged_without_generating_again(
    harness: BotHarness,
) -> None:
    harness.api.script(Reply.ok(delay=0.8))
    await harness.start()
    sent = harness.slash("imagine", {"prompt": "A lighthouse at dusk"})
    await generating(harness, sent)
    harness.discord.fail_next("PATCH", WEBHOOK_EDIT, status=403, times=1)
    harness.discord.fail_next("POST", r"/channels/\d+/messages$", status=403, times=1)

    job = await harness.job(sent.id)

    assert (job.state, job.cost_fen, job.interaction_token) == ("failed", 0, None)
    message = await harness.reply(sent, lambda m: "could not be posted" in m.content)
    assert "Nothing was charged." in message.content
    assert not message.attachments
    assert not [m for m in harness.discord.messages.values() if m.attachments]
    assert harness.api.generation_count == 1
    assert len(harness.api.downloads) == 1


async def test_a_channel_that_refuses_the_fallback_post_fails_the_job_uncharged(harness: BotHarness) -> None:
    harness.api.script(Reply.ok(delay=0.8))
    await harness.start()
    sent = harness.slash("imagine", {"prompt": "A lighthouse at dusk"})
    await generating(harness, sent)
    harness.discord.expire_token(sent.id)
    harness.discord.fail_next("POST", rf"/channels/{sent.channel_id}/messages$", status=403, times=1)

    job = await harness.job(sent.id)

    assert (job.state, job.cost_fen, job.interaction_token) == ("failed", 0, None)
    assert not [m for m in harness.discord.messages.values() if m.attachments]
    [notice] = await harness.discord.wait_for(lambda f: posted_in_channel(f, sent.channel_id))
    assert notice.content.startswith(f"<@{sent.user_id}> ❌") and "Nothing was charged." in notice.content
    assert [str(user) for user in notice.allowed_mentions["users"]] == [str(sent.user_id)]
    assert harness.api.generation_count == 1


# -- 6. the 15-minute token never leaks --------------------------------------------------------------
async def test_finished_jobs_keep_no_interaction_token(harness: BotHarness) -> None:
    harness.api.script(Reply.ok(), Reply.content_rejected())
    await harness.start()
    ok = harness.slash("imagine", {"prompt": "A lighthouse at dusk"})
    await harness.result(ok)
    refused = harness.slash("imagine", {"prompt": "Something the provider refuses"})

    delivered, failed = await harness.job(ok.id), await harness.job(refused.id)

    assert (delivered.state, failed.state) == ("delivered", "failed")
    assert [r["interaction_token"] for r in await rows(harness)] == [None, None]
    found = await harness.bot.pipeline.store.fetch_all(
        "SELECT id FROM jobs WHERE interaction_token IN (?, ?)", (ok.token, refused.token)
    )
    assert found == []


async def _exercise_every_path(harness: BotHarness) -> list[SentInteraction]:
    """A delivered job, a failed one, a channel fallback and two buttons; returns the interactions."""
    harness.api.script(Reply.ok(), Reply.content_rejected(), Reply.ok(delay=0.8))
    await harness.start()
    ok = harness.slash("imagine", {"prompt": "A lighthouse at dusk"})
    message = await harness.result(ok)
    failed = harness.slash("imagine", {"prompt": "A storm at sea"}, user_id=OTHER_USER)
    await harness.job(failed.id)
    late = harness.slash("imagine", {"prompt": "A harbour at night"})
    await generating(harness, late)
    harness.discord.expire_token(late.id)
    await harness.job(late.id)
    details = harness.discord.click(message.id, f"imagine:details:{ok.id}", user_id=ok.user_id)
    await answer_to(harness.discord, details)
    reroll = harness.discord.click(message.id, f"imagine:reroll:{ok.id}", user_id=ok.user_id)
    await harness.job(reroll.id)
    assert (await harness.job(failed.id)).state == "failed"
    return [ok, failed, late, details, reroll]


def _scrubbed_output(records: list[logging.LogRecord], handler: logging.Handler, secrets: list[str]) -> str:
    """The text the bot's one log handler would write: bot.cli.main installs configure_logging's
    SecretScrubber (with the bot token and the API key) on it, so every record passes it first."""
    scrubber = SecretScrubber(secrets)
    lines = []
    for record in records:
        scrubber.filter(record)
        lines.append(handler.format(record))
    return "\n".join(lines)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="imagine")
    caplog.set_level(logging.DEBUG, logger="discord")
    return caplog


async def test_the_bots_own_log_lines_never_carry_a_token_or_secret(
    harness: BotHarness, debug_logs: pytest.LogCaptureFixture
) -> None:
    interactions = await _exercise_every_path(harness)

    ours = [r for r in debug_logs.records if r.name.startswith("imagine")]
    assert len({r.name for r in ours}) >= 3, "the bot logged (almost) nothing: the capture is broken"
    text = "\n".join(debug_logs.handler.format(r) for r in ours)  # not scrubbed: the raw records
    for secret in [harness.discord.bot_token, TEST_API_KEY, *(sent.token for sent in interactions)]:
        assert secret not in text


async def test_the_log_output_never_carries_the_bot_token_or_the_api_key(
    harness: BotHarness, debug_logs: pytest.LogCaptureFixture
) -> None:
    await _exercise_every_path(harness)
    secrets = [harness.discord.bot_token, TEST_API_KEY]

    text = _scrubbed_output(debug_logs.records, debug_logs.handler, secrets)

    assert "discord.gateway" in text and "discord.webhook" in text  # discord.py's debug lines are in
    for secret in secrets:
        assert secret not in text


async def test_the_log_output_never_carries_an_interaction_token(
    harness: BotHarness, debug_logs: pytest.LogCaptureFixture
) -> None:
    interactions = await _exercise_every_path(harness)

    text = _scrubbed_output(debug_logs.records, debug_logs.handler, [harness.discord.bot_token, TEST_API_KEY])

    assert f"/{interactions[0].id}/***/callback" in text  # tokens in webhook URLs are scrubbed,
    for sent in interactions:
        assert sent.token not in text  # and so are those in the dumped gateway events
