"""The slash commands end to end, as a user sees them: the real discord.py client (our ImagineBot)
against the fake Discord and the fake image API, with a real SQLite file."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from bot import messages, presets
from bot.imaging.errors import (
    AuthenticationFailed,
    BadRequest,
    ContentRejected,
    ForbiddenImageSource,
    ImageUnavailable,
    MalformedResponse,
    PermissionDenied,
    RateLimited,
    ServerError,
    Timeout,
)
from bot.ui import render
from tests.conftest import TEST_API_KEY
from tests.discord.conftest import BotHarness
from tests.fakes.fake_discord import SentInteraction
from tests.fakes.image_api import Reply
from tests.fakes.png import png_size

pytestmark = pytest.mark.both_backends

NO_PINGS = {"parse": []}
EPHEMERAL = 64


def upstream_parameters(harness: BotHarness, index: int = 0) -> dict[str, Any]:
    return harness.api.requests[index].json["parameters"]


def edit_payloads(message) -> list[dict[str, Any]]:
    return [h["payload"] for h in message.history if h["op"] == "edit"]


async def first_callback(harness: BotHarness, sent: SentInteraction) -> dict[str, Any]:
    await harness.discord.wait_for(lambda f: f.callbacks(sent.id))
    return harness.discord.callback_payloads(sent.id)[0]


async def job_count(harness: BotHarness) -> int:
    assert harness.bot is not None and harness.bot.pipeline is not None
    return len(await harness.bot.pipeline.store.fetch_all("SELECT id FROM jobs"))


# -- 1. each command's happy path ---------------------------------------------------------------


async def test_imagine_defers_then_edits_the_same_message_with_the_image(harness: BotHarness) -> None:
    await harness.start()
    sent = harness.slash("imagine", {"prompt": "A cute orange kitten"})
    message = await harness.result(sent)
    assert harness.discord.callbacks(sent.id)[0] == 5  # deferred at once, "thinking…"
    [attachment] = message.attachments
    assert attachment["filename"] == f"imagine-{sent.id}.png"
    assert png_size(attachment["bytes"]) == (1328, 1328)
    [embed] = message.embeds
    assert embed["description"] == "A cute orange kitten"
    assert embed["image"]["url"] == f"attachment://imagine-{sent.id}.png"
    assert message.custom_ids() == [
        f"imagine:reroll:{sent.id}",
        f"imagine:remix:{sent.id}",
        f"imagine:details:{sent.id}",
        f"imagine:delete:{sent.id}",
    ]
    assert message.allowed_mentions == {"parse": []}
    job = await harness.job(sent.id)
    assert (job.state, job.cost_fen, job.interaction_token) == ("delivered", 18, None)


async def test_poster_sends_the_poster_prompt_with_the_poster_style(harness: BotHarness) -> None:
    await harness.start()
    options = {"title": "Summer Sale", "subtitle": "50% off everything", "background": "a sunny beach"}
    sent = harness.slash("poster", options)
    message = await harness.result(sent)
    [request] = harness.api.requests
    assert request.json["prompt"] == (
        "A poster with the title 'Summer Sale' and subtitle '50% off everything', background is a sunny beach"
    )
    assert request.json["parameters"] == {
        "size": "928*1664",
        "negative_prompt": "messy, low quality",
        "prompt_extend": True,
        "watermark": False,
    }
    assert png_size(message.attachments[0]["bytes"]) == (928, 1664)
    assert message.embeds[0]["title"] == "Poster"
    assert (await harness.job(sent.id)).state == "delivered"


async def test_couplet_sends_the_couplet_prompt_at_three_by_four(harness: BotHarness) -> None:
    await harness.start()
    options = {
        "left": "春回大地",
        "right": "福满人间",
        "horizontal": "万象更新",
        "background": "洒金红纸",
        "font": "黑色行书",
    }
    sent = harness.slash("couplet", options)
    message = await harness.result(sent)
    [request] = harness.api.requests
    assert request.json["prompt"] == (  # Chinese scrolls: the prompt is Chinese too (issue 11)
        "一副中国春联，左侧竖联“春回大地”，右侧竖联“福满人间”，顶部横批“万象更新”，背景是洒金红纸，字体是黑色行书"
    )
    assert request.json["parameters"]["size"] == "1140*1472"
    assert png_size(message.attachments[0]["bytes"]) == (1140, 1472)
    assert message.embeds[0]["title"] == "Couplet"


async def test_queue_shows_running_waiting_and_the_callers_real_place(harness: BotHarness) -> None:
    await harness.start(upstream_concurrency=1, shutdown_grace_s=0)
    harness.api.script(Reply.ok(delay=30))  # the first job keeps the only upstream slot busy
    harness.slash("imagine", {"prompt": "running job"}, user_id=1001)
    await harness.discord.wait_for(lambda f: harness.api.requests)
    first = harness.slash("imagine", {"prompt": "first waiting"}, user_id=1002)
    # admitted one after the other: two pushed at once race for the first place
    await harness.reply(first, lambda m: "#1 in this server" in m.content)
    mine = harness.slash("imagine", {"prompt": "second waiting"}, user_id=1003)
    await harness.reply(mine, lambda m: "#2 in this server" in m.content)
    query = harness.slash("queue", user_id=1003)
    payload = await first_callback(harness, query)
    assert harness.discord.callbacks(query.id) == [4]
    assert payload["data"]["flags"] == EPHEMERAL
    [embed] = payload["data"]["embeds"]
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert fields["Generating"] == "1"
    assert fields["Waiting"] == "2 / 25"
    assert re.fullmatch(r"#2 \(about \d+ (s|min)\)", fields["Your requests"])


# -- 2. sizes and styles as they reach the upstream request --------------------------------------

STYLE_CASES = {
    "imagine default": (
        "imagine",
        {"prompt": "a lighthouse"},
        {"size": "1328*1328", "negative_prompt": "", "prompt_extend": True, "watermark": True},
    ),
    "imagine style photo": (
        "imagine",
        {"prompt": "a lighthouse", "style": "photo"},
        {"size": "1664*928", "negative_prompt": "blur, low quality, noise", "prompt_extend": False,
         "watermark": False},
    ),
    "explicit options beat the style": (
        "imagine",
        {"prompt": "a lighthouse", "style": "photo", "size": "928*1664", "prompt_extend": True,
         "watermark": True, "negative_prompt": "cartoon"},
        {"size": "928*1664", "negative_prompt": "cartoon", "prompt_extend": True, "watermark": True},
    ),
    "poster style text-poster": (
        "poster",
        {"title": "Grand Opening", "style": "text-poster"},
        {"size": "928*1664", "negative_prompt": "blurred text", "prompt_extend": False, "watermark": False},
    ),
}  # fmt: skip


@pytest.mark.parametrize(("command", "options", "expected"), STYLE_CASES.values(), ids=STYLE_CASES.keys())
async def test_size_and_style_reach_the_upstream_parameters(
    harness: BotHarness, command: str, options: dict[str, Any], expected: dict[str, Any]
) -> None:
    await harness.start()
    sent = harness.slash(command, options)
    await harness.result(sent)
    assert upstream_parameters(harness) == expected


# -- 3. progress in the same message ---------------------------------------------------------------


async def test_a_queued_job_shows_queued_then_generating_then_the_image_in_one_message(
    harness: BotHarness,
) -> None:
    await harness.start(upstream_concurrency=1)
    harness.api.script(Reply.ok(delay=1.5), Reply.ok(delay=0.3))
    first = harness.slash("imagine", {"prompt": "the job in front"}, user_id=2001)
    await harness.discord.wait_for(lambda f: harness.api.requests)
    sent = harness.slash("imagine", {"prompt": "the job behind"}, user_id=2002)
    message = await harness.result(sent)
    edits = edit_payloads(message)
    texts = [edit.get("content") or "" for edit in edits]
    queued = next(i for i, t in enumerate(texts) if "**Queued:** #1 in this server" in t)
    generating = next(i for i, t in enumerate(texts) if "**Generating…**" in t)
    assert queued < generating < len(edits) - 1
    assert edits[-1]["attachments"] and message.attachments  # the last edit carries the image
    assert all(edit["allowed_mentions"] == NO_PINGS for edit in edits)
    assert harness.discord.original_message(first.id).attachments  # the first one finished too


# -- 4. the error table as the user sees it ------------------------------------------------------------

ERROR_ROWS = {
    "400 bad request": (
        [Reply.error(400, "Parameter Error: the prompt and size disagree")], {},
        messages.describe(BadRequest("Parameter Error: the prompt and size disagree")), 1, True,
    ),
    "content rejected": ([Reply.content_rejected()], {}, messages.describe(ContentRejected("")), 1, True),
    "401": ([Reply.error(401)], {}, messages.describe(AuthenticationFailed("")), 1, True),
    "403": ([Reply.error(403)], {}, messages.describe(PermissionDenied("")), 1, True),
    # every attempt refused: the job goes back to the head of its queue 5 times, then fails;
    # a 7th attempt would succeed, so the test sees it if the requeues are not bounded.
    "429 past retries and requeues": (
        [Reply.error(429, retry_after=0)] * 6, {}, messages.describe(RateLimited("")), 6, True,
    ),
    "5xx after retries": (
        [Reply.error(500), Reply.error(503)], {"upstream_max_retries": 1},
        messages.describe(ServerError("")), 2, True,
    ),
    # no answer, so no request id the bot could know
    "timeout": ([Reply.hang()], {"upstream_timeout_s": 0.5}, messages.describe(Timeout("")), 1, False),
    "200 without an image": ([Reply.no_image()], {}, messages.describe(MalformedResponse("")), 1, True),
    "200 not json": ([Reply.non_json(200)], {}, messages.describe(MalformedResponse("")), 1, True),
    "image missing": (
        [Reply.ok(image="missing")], {},
        messages.describe(ImageUnavailable("the image host answered HTTP 404")), 1, True,
    ),
    "image on a forbidden host": (
        [Reply.ok(url="https://images.evil.example/cat.png")], {},
        messages.describe(
            ForbiddenImageSource("the image host 'images.evil.example' is not in IMAGE_HOST_ALLOWLIST")
        ), 1, True,
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("replies", "overrides", "sentence", "attempts", "has_reference"),
    ERROR_ROWS.values(),
    ids=ERROR_ROWS.keys(),
)
async def test_an_upstream_failure_edits_the_reply_with_its_sentence_and_charges_nothing(
    harness: BotHarness,
    replies: list[Reply],
    overrides: dict[str, Any],
    sentence: str,
    attempts: int,
    has_reference: bool,
) -> None:
    await harness.start(**{"upstream_max_retries": 0, **overrides})
    harness.api.script(*replies)
    sent = harness.slash("imagine", {"prompt": "A red fox in the snow"})
    message = await harness.reply(sent, lambda m: m.content.startswith("❌"))
    requests = harness.api.requests
    assert len(requests) == attempts
    assert message.content.startswith(f"❌ {sentence}")
    reference = f"Reference: `{requests[-1].request_id}`"
    assert (reference in message.content) is has_reference
    assert not message.attachments and not message.embeds
    assert message.allowed_mentions == NO_PINGS
    job = await harness.job(sent.id)
    assert (job.state, job.cost_fen, job.interaction_token) == ("failed", 0, None)


async def test_auth_failures_show_nothing_of_the_key_or_the_gateways_detail(harness: BotHarness) -> None:
    await harness.start(upstream_max_retries=0)
    harness.api.script(Reply.error(401, "Invalid API key sk-test-0123"), Reply.error(403))
    first = harness.slash("imagine", {"prompt": "one"}, user_id=3001)
    second = harness.slash("imagine", {"prompt": "two"}, user_id=3002)
    for sent in (first, second):
        message = await harness.reply(sent, lambda m: m.content.startswith("❌"))
        assert "unavailable" in message.content
        for leak in (TEST_API_KEY, "sk-test", "Invalid API key", "Insufficient", "balance"):
            assert leak not in message.content


# -- 5. input refused before anything is spent -------------------------------------------------------

REFUSALS = {
    "prompt over PROMPT_MAX_CHARS": (
        "imagine", {"prompt": "x" * 30}, {"prompt_max_chars": 20},
        "The prompt is 30 characters long; the limit is 20. Shorten it and try again.",
    ),
    "control character in a prompt": (
        "imagine", {"prompt": "a cat\x07 on a mat"}, {},
        "The prompt contains a control character (U+0007); remove it and try again.",
    ),
    "newline in a poster title": (
        "poster", {"title": "Big\nSale"}, {},
        "The title contains a control character (U+000A); remove it and try again.",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("command", "options", "overrides", "text"), REFUSALS.values(), ids=REFUSALS.keys())
async def test_bad_input_is_refused_privately_before_anything_is_spent(
    harness: BotHarness, command: str, options: dict[str, Any], overrides: dict[str, Any], text: str
) -> None:
    await harness.start(**overrides)
    sent = harness.slash(command, options)
    payload = await first_callback(harness, sent)
    assert harness.discord.callbacks(sent.id) == [4]  # answered, never deferred publicly
    assert payload["data"]["flags"] == EPHEMERAL
    assert payload["data"]["content"] == text
    public = [m for m in harness.discord.channel_messages(sent.channel_id) if not m.ephemeral]
    assert public == []
    assert harness.api.requests == []
    assert await harness.bot.service.jobs.get(sent.id) is None


# -- 6. mentions in a prompt ping nobody --------------------------------------------------------------


async def test_a_prompt_full_of_mentions_is_echoed_without_pinging_anyone(harness: BotHarness) -> None:
    await harness.start()
    harness.api.script(Reply.ok(delay=0.3))  # long enough for the "Generating…" edit to be sent
    prompt = "@everyone @here <@123> <@&456>"
    sent = harness.slash("imagine", {"prompt": prompt})
    message = await harness.result(sent)
    assert message.allowed_mentions == NO_PINGS
    sent_for_it = [r for r in harness.discord.requests_to("*", re.escape(sent.token)) if r.method in ("POST", "PATCH")]
    callbacks = [r for r in sent_for_it if r.path.endswith("/callback")]
    payloads = [r.json for r in sent_for_it if not r.path.endswith("/callback")]
    assert all("content" not in (r.json.get("data") or {}) for r in callbacks)  # the defer echoes nothing
    assert len(payloads) >= 2  # a status edit and the result
    echoed = [p for p in payloads if "@everyone" in (p.get("content") or "") + str(p.get("embeds"))]
    assert echoed  # the prompt really is in what was sent...
    assert all(p["allowed_mentions"] == NO_PINGS for p in payloads)  # ...and pings no one


# -- 7. DMs ----------------------------------------------------------------------------------------------


async def test_a_command_in_dms_gets_a_private_explanation_and_queues_nothing(harness: BotHarness) -> None:
    await harness.start()
    sent = harness.discord.send_dm_slash("imagine", {"prompt": "A cute orange kitten"})
    payload = await first_callback(harness, sent)
    assert harness.discord.callbacks(sent.id) == [4]
    assert payload["data"]["flags"] == EPHEMERAL
    assert payload["data"]["content"] == render.DM_ONLY_TEXT
    assert harness.api.requests == []
    assert await job_count(harness) == 0


# -- 8. a replayed interaction ----------------------------------------------------------------------------


async def test_a_replayed_interaction_creates_no_second_job_or_upstream_call(
    harness: BotHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imagine.service")
    await harness.start()
    harness.api.script(Reply.ok(delay=0.5))
    sent = harness.slash("imagine", {"prompt": "only once"})
    await harness.discord.wait_for(lambda f: harness.api.requests)
    harness.discord.push_event("INTERACTION_CREATE", sent.payload)
    replayed = f"job {sent.id} exists already (a replayed interaction)"
    await harness.discord.wait_for(lambda f: replayed in caplog.text)
    message = await harness.result(sent)
    assert len(harness.api.requests) == 1
    assert await job_count(harness) == 1
    assert (await harness.job(sent.id)).cost_fen == 18
    assert harness.discord.callbacks(sent.id) == [5]  # the replay did not try to answer a second time
    assert len(harness.discord.requests_to("POST", f"/interactions/{sent.id}/")) == 1
    public = [m for m in harness.discord.channel_messages(sent.channel_id) if not m.ephemeral]
    assert [m.id for m in public] == [message.id]


# -- 9. command sync ---------------------------------------------------------------------------------------


async def test_commands_are_synced_once_with_their_declared_options(harness: BotHarness) -> None:
    await harness.start()
    assert harness.discord.sync_count == 1
    commands = {c["name"]: c for c in harness.discord.synced_commands()}
    assert set(commands) == {
        "imagine",
        "poster",
        "couplet",
        "queue",
        "usage",
        "imagine-admin",
        "settings",
        "history",
        "Imagine this",
    }
    assert commands["Imagine this"]["type"] == 3  # a message context-menu command
    assert int(commands["imagine-admin"]["default_member_permissions"]) == 1 << 5  # Manage Server
    assert commands["imagine-admin"]["dm_permission"] is False  # servers only
    options = {name: {o["name"]: o for o in c.get("options", [])} for name, c in commands.items()}
    size_choices = [{"name": s.label, "value": s.value} for s in presets.SIZES]
    for name in ("imagine", "poster", "couplet"):
        choices = [{"name": c["name"], "value": c["value"]} for c in options[name]["size"]["choices"]]
        assert choices == size_choices
    for name in ("imagine", "poster"):  # styles are offered by autocomplete, with a description each
        assert options[name]["style"]["autocomplete"] and "choices" not in options[name]["style"]
    assert options["imagine"]["negative_prompt"]["autocomplete"]
    assert [c["value"] for c in options["poster"]["language"]["choices"]] == ["zh", "en"]
    assert options["imagine"]["prompt"]["max_length"] == 800 and options["imagine"]["prompt"]["required"]
    assert options["imagine"]["negative_prompt"]["max_length"] == 500
    assert set(options["couplet"]) == {
        "left",
        "right",
        "horizontal",
        "background",
        "font",
        "size",
        "private",
        "spoiler",
    }
    for name in ("imagine", "poster", "couplet"):  # issue 12: private and spoiler results, optional booleans
        assert (options[name]["private"]["type"], options[name]["spoiler"]["type"]) == (5, 5)
        assert not options[name]["private"].get("required") and not options[name]["spoiler"].get("required")
    assert options["queue"] == {}


async def test_a_restart_with_unchanged_commands_does_not_sync_again(harness: BotHarness) -> None:
    await harness.start()
    assert harness.discord.sync_count == 1
    await harness.stop()
    await harness.start()
    assert harness.discord.sync_count == 1
    sent = harness.slash("imagine", {"prompt": "after the restart"})
    assert (await harness.result(sent)).attachments
