"""Issue 12 (part B), end to end: private results, spoilers, /settings and /history, through the real
discord.py client against the fake Discord and the fake image API, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.discord.conftest import EPHEMERAL, BotHarness, private_refusal
from tests.discord.test_admin import ADMIN_PERMISSIONS, _resolved, admin, answer, channel, user
from tests.fakes.fake_discord import FakeMessage, SentInteraction
from tests.fakes.image_api import Reply

pytestmark = pytest.mark.both_backends

PRICE_FEN = 18
USER_ID = 910_001
OTHER_ID = 910_002


def imagine(harness: BotHarness, prompt: str = "A lighthouse at dusk", **options: Any) -> SentInteraction:
    user_id = options.pop("user_id", USER_ID)
    channel_id = options.pop("channel_id", None)
    return harness.slash("imagine", {"prompt": prompt, **options}, user_id=user_id, channel_id=channel_id)


def fields_of(embed: dict) -> dict[str, str]:
    return {field["name"]: field["value"] for field in embed.get("fields", [])}


def upstream_parameters(harness: BotHarness, index: int = -1) -> dict[str, Any]:
    return harness.api.requests[index].json["parameters"]


def public_images(harness: BotHarness) -> list[FakeMessage]:
    return [m for m in harness.discord.messages.values() if m.attachments and not m.ephemeral and not m.deleted]


async def details(harness: BotHarness, message: FakeMessage, job_id: int, user_id: int = USER_ID) -> dict[str, str]:
    click = harness.discord.click(message.id, f"imagine:details:{job_id}", user_id=user_id)
    shown = await harness.discord.wait_for(lambda f: f.original_message(click.id), timeout=15)
    return fields_of(shown.embeds[0])


# -- private results -------------------------------------------------------------------------------------
async def test_a_private_result_is_ephemeral_and_charged_and_its_reroll_stays_private(harness: BotHarness) -> None:
    await harness.start()
    sent = imagine(harness, private=True)
    message = await harness.result(sent)

    [deferral] = harness.discord.callback_payloads(sent.id)
    assert deferral["type"] == 5 and deferral["data"]["flags"] == EPHEMERAL  # "thinking…" only they see
    assert message.ephemeral and message.attachments[0]["filename"] == f"imagine-{sent.id}.png"
    assert public_images(harness) == []
    job = await harness.job(sent.id)
    assert (job.state, job.private, job.cost_fen) == ("delivered", True, PRICE_FEN)

    reroll = harness.discord.click(message.id, f"imagine:reroll:{sent.id}", user_id=USER_ID)
    rerolled = await harness.result(reroll)
    assert rerolled.ephemeral and harness.discord.callback_payloads(reroll.id)[0]["data"]["flags"] == EPHEMERAL
    assert (await harness.job(reroll.id)).private
    assert public_images(harness) == []


async def test_a_private_result_whose_window_closed_is_refunded_and_told_by_dm_never_posted(
    harness: BotHarness,
) -> None:
    harness.api.script(Reply.ok(delay=1.0))
    await harness.start()
    sent = imagine(harness, private=True)
    await harness.reply(sent, lambda m: "Generating" in m.content)
    harness.discord.expire_token(sent.id)

    job = await harness.job(sent.id)

    assert (job.state, job.cost_fen, job.error_code) == ("failed", 0, "PrivateReplyClosed")
    assert public_images(harness) == [] and not harness.discord.channel_messages(sent.channel_id)[1:]
    assert [m for m in harness.discord.channel_messages(sent.channel_id) if not m.webhook] == []
    dm = harness.discord.dm_channel_id(USER_ID)
    [told] = await harness.discord.wait_for(lambda f: f.channel_messages(dm) or None, timeout=15)
    assert "private image" in told.content and told.content.count("Nothing was charged.") == 1
    assert not told.attachments
    counters = await harness.bot.pipeline.store.fetch_all("SELECT scope, used FROM quota_counters")
    assert all(row["used"] == 0 for row in counters)  # the reserved image and money were given back


async def test_a_server_that_forbids_private_results_refuses_them_privately_before_any_charge(
    harness: BotHarness,
) -> None:
    await harness.start()
    changed = await answer(harness, admin(harness, "private", allowed=False))
    assert "turned private results off" in changed.content

    refusal = await private_refusal(harness, imagine(harness, private=True))

    assert refusal.startswith("Private results are turned off in this server")
    assert harness.api.generation_count == 0
    # the same person, without the option, is served in the channel
    public = await harness.result(imagine(harness))
    assert not public.ephemeral


# -- spoilers --------------------------------------------------------------------------------------------
async def test_spoiler_posts_the_attachment_as_a_spoiler_without_an_uncovered_embed_image(
    harness: BotHarness,
) -> None:
    await harness.start()
    sent = imagine(harness, spoiler=True)
    message = await harness.result(sent)

    assert message.attachments[0]["filename"] == f"SPOILER_imagine-{sent.id}.png"
    assert "image" not in message.embeds[0]  # an embed would show the picture uncovered
    assert (await harness.job(sent.id)).spoiler


async def test_a_spoiler_channel_makes_every_image_there_a_spoiler_and_nowhere_else(harness: BotHarness) -> None:
    await harness.start()
    first, second = harness.discord.guilds[0].channel_ids[:2]
    changed = await answer(harness, admin(harness, "channels", "spoiler", channel=channel(second)))
    assert f"<#{second}>" in changed.content
    listed = await answer(harness, admin(harness, "channels", "list"))
    assert f"Images are always spoilers in: <#{second}>." in listed.content

    there = await harness.result(imagine(harness, channel_id=second))
    elsewhere = await harness.result(imagine(harness, "Another lighthouse", channel_id=first))

    assert there.attachments[0]["filename"].startswith("SPOILER_")
    assert not elsewhere.attachments[0]["filename"].startswith("SPOILER_")

    await answer(harness, admin(harness, "channels", "spoiler", channel=channel(second), required=False))
    after = await harness.result(imagine(harness, "A third lighthouse", channel_id=second))
    assert not after.attachments[0]["filename"].startswith("SPOILER_")


async def test_limits_show_the_private_and_spoiler_settings(harness: BotHarness) -> None:
    await harness.start()
    second = harness.discord.guilds[0].channel_ids[1]
    before = fields_of((await answer(harness, admin(harness, "limits", "show"))).embeds[0])
    assert (before["Private results"], before["Always spoilers in"]) == ("on", "none")

    await answer(harness, admin(harness, "private", allowed=False))
    await answer(harness, admin(harness, "channels", "spoiler", channel=channel(second)))
    after = fields_of((await answer(harness, admin(harness, "limits", "show"))).embeds[0])

    assert (after["Private results"], after["Always spoilers in"]) == ("off", f"<#{second}>")


async def test_a_spoiler_posted_in_the_channel_after_the_window_closed_is_still_a_spoiler(
    harness: BotHarness,
) -> None:
    harness.api.script(Reply.ok(delay=1.0))
    await harness.start()
    sent = imagine(harness, spoiler=True)
    await harness.reply(sent, lambda m: "Generating" in m.content)
    harness.discord.expire_token(sent.id)

    [posted] = await harness.discord.wait_for(
        lambda f: [m for m in f.channel_messages(sent.channel_id) if m.attachments and not m.webhook] or None,
        timeout=15,
    )

    assert posted.attachments[0]["filename"] == f"SPOILER_imagine-{sent.id}.png"
    job = await harness.job(sent.id)
    assert (job.state, job.result_message_id) == ("delivered", posted.id)  # /history links to the post


# -- /settings -------------------------------------------------------------------------------------------
async def settings(harness: BotHarness, user_id: int = USER_ID, **options: Any) -> dict[str, str]:
    sent = harness.slash("settings", options, user_id=user_id)
    message = await harness.reply(sent, lambda m: bool(m.embeds))
    assert message.ephemeral
    return fields_of(message.embeds[0])


async def test_settings_show_store_and_clear_a_users_defaults(harness: BotHarness) -> None:
    await harness.start()
    assert await settings(harness) == {
        "Style": "not set",
        "Size": "not set",
        "Prompt extension": "not set",
        "Watermark": "not set",
        "Private results": "not set",
    }
    shown = await settings(harness, style="precise", size="1664*928", watermark=False)
    assert (shown["Style"], shown["Watermark"], shown["Prompt extension"]) == ("Precise control", "off", "not set")
    assert shown["Size"].startswith("16:9")
    assert (await settings(harness, clear="watermark"))["Watermark"] == "not set"
    assert (await settings(harness))["Style"] == "Precise control"  # kept
    assert await settings(harness, user_id=OTHER_ID) == dict.fromkeys(shown, "not set")  # per user
    cleared = await settings(harness, clear="all")
    assert set(cleared.values()) == {"not set"}
    assert await harness.bot.pipeline.store.fetch_all("SELECT * FROM user_settings") == []


async def test_an_unknown_default_style_is_refused_privately(harness: BotHarness) -> None:
    await harness.start()
    sent = harness.slash("settings", {"style": "no-such-style"}, user_id=USER_ID)
    message = await harness.discord.wait_for(lambda f: f.original_message(sent.id), timeout=15)
    assert message.ephemeral and "no-such-style" in message.content
    assert await harness.bot.pipeline.store.fetch_all("SELECT * FROM user_settings") == []


async def test_defaults_apply_below_explicit_options_and_details_says_where_each_came_from(
    harness: BotHarness,
) -> None:
    await harness.start()
    await settings(harness, size="1664*928", watermark=False, private=True)

    sent = imagine(harness)
    message = await harness.result(sent)
    assert message.ephemeral  # private: their default
    assert upstream_parameters(harness)["size"] == "1664*928"
    assert upstream_parameters(harness)["watermark"] is False
    shown = await details(harness, message, sent.id)
    assert shown["Size"].endswith("(your default)") and shown["Watermark"] == "off (your default)"
    assert shown["Private"] == "on (your default)"
    assert shown["Style"] == "rapid (server default)" and shown["Prompt extend"] == "on (the style)"

    explicit = imagine(harness, "A second lighthouse", size="1328*1328", watermark=True, private=False)
    message = await harness.result(explicit)
    assert not message.ephemeral  # the option wins over the default
    assert (upstream_parameters(harness)["size"], upstream_parameters(harness)["watermark"]) == ("1328*1328", True)
    shown = await details(harness, message, explicit.id)
    assert shown["Size"].endswith("(your option)") and shown["Watermark"] == "on (your option)"

    other = imagine(harness, "Someone else's lighthouse", user_id=OTHER_ID)
    await harness.result(other)
    assert upstream_parameters(harness)["size"] == "1328*1328"  # the rapid style's square: no defaults


# -- /history --------------------------------------------------------------------------------------------
async def history(harness: BotHarness, user_id: int = USER_ID, **kw: Any) -> tuple[SentInteraction, FakeMessage]:
    sent = harness.slash("history", kw.pop("options", {}), user_id=user_id, **kw)
    return sent, await harness.reply(sent, lambda m: bool(m.embeds))


async def test_history_pages_the_requesters_images_newest_first_with_links(harness: BotHarness) -> None:
    await harness.start()
    made = []
    for i in range(7):
        sent = imagine(harness, f"Lighthouse number {i}", private=(i == 0))
        await harness.result(sent)
        made.append(sent)
    await harness.result(imagine(harness, "Not mine", user_id=OTHER_ID))

    sent, page = await history(harness)

    assert page.ephemeral and page.allowed_mentions == {"parse": []}
    [embed] = page.embeds
    assert embed["title"] == "Your images in this server" and embed["footer"]["text"] == "Page 1 of 2 · 7 image(s)"
    values = [field["value"] for field in embed["fields"]]
    assert [f"Lighthouse number {i}" in v for i, v in zip(range(6, 1, -1), values, strict=True)] == [True] * 5
    guild = harness.discord.guild_id
    newest = made[6]
    link = f"https://discord.com/channels/{guild}/{newest.channel_id}/{harness.discord.original_message(newest.id).id}"
    assert f"[open the message]({link})" in values[0] and "<t:" in values[0]
    assert embed["fields"][0]["name"] == "1. Rapid creation · 1:1 square 1328×1328"
    assert page.custom_ids() == [f"history:{USER_ID}:{USER_ID}:-1:prev", f"history:{USER_ID}:{USER_ID}:1:next"]

    stranger = harness.discord.click(page.id, f"history:{USER_ID}:{USER_ID}:1:next", user_id=OTHER_ID)
    refused = await harness.discord.wait_for(lambda f: f.original_message(stranger.id), timeout=15)
    assert refused.ephemeral and "Only the person who opened this history" in refused.content

    click = harness.discord.click(page.id, f"history:{USER_ID}:{USER_ID}:1:next", user_id=USER_ID)
    turned = await harness.discord.wait_for(
        lambda f: (m := f.message(page.id)) is not None and "Page 2 of 2" in m.embeds[0]["footer"]["text"] and m,
        timeout=15,
    )
    assert harness.discord.callbacks(click.id) == [7]  # the same message, edited
    second = [field["value"] for field in turned.embeds[0]["fields"]]
    assert len(second) == 2 and "Lighthouse number 1" in second[0] and "Lighthouse number 0" in second[1]
    assert "private (only you saw it)" in second[1] and "open the message" not in second[1]


async def test_history_of_someone_else_needs_manage_server(harness: BotHarness) -> None:
    await harness.start()
    await harness.result(imagine(harness, "Their lighthouse", user_id=OTHER_ID))
    someone = {"user": {"type": 6, "value": str(OTHER_ID)}}
    resolved = _resolved([user(OTHER_ID)], harness.discord.guild_id)

    refused = harness.slash("history", someone, user_id=USER_ID, permissions="0", resolved=resolved)
    message = await harness.discord.wait_for(lambda f: f.original_message(refused.id), timeout=15)
    assert message.ephemeral and message.content.startswith("Only members with Manage Server")

    allowed = harness.slash("history", someone, user_id=USER_ID, permissions=ADMIN_PERMISSIONS, resolved=resolved)
    page = await harness.reply(allowed, lambda m: bool(m.embeds))
    assert "Their lighthouse" in page.embeds[0]["fields"][0]["value"]
    assert page.embeds[0]["footer"]["text"] == "Page 1 of 1 · 1 image(s)"


async def test_history_is_per_server(harness: BotHarness) -> None:
    harness.discord.add_guild()
    await harness.start()
    await harness.result(imagine(harness, "Made in the first server"))
    other_guild = harness.discord.guilds[1].id

    sent = harness.slash("history", {}, user_id=USER_ID, guild_id=other_guild)
    page = await harness.reply(sent, lambda m: bool(m.embeds))
    assert page.embeds[0]["description"] == "No images yet." and "fields" not in page.embeds[0]
