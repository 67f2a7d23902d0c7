"""Issue 11 through the fake Discord: the same commands in English, zh-CN and zh-TW clients, the
server's language for channel posts and the moderation log, prompts that keep text exact, and
autocomplete within Discord's 25-choice limit."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.storage.jobs import NewJob
from tests.discord.conftest import BotHarness, private_refusal
from tests.discord.test_admin import ADMIN_PERMISSIONS
from tests.fakes.fake_discord import SentInteraction
from tests.fakes.fake_discord_models import walk_components
from tests.fakes.image_api import Reply

pytestmark = pytest.mark.both_backends

USER_ID = 930_001
OTHER_ID = 930_002
ADMIN_ID = 930_003
NOON_UTC = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
NEXT_UTC_MIDNIGHT = int(datetime(2026, 3, 11, tzinfo=UTC).timestamp())

IN_EACH_LANGUAGE = {
    "en-US": ("Image", ["Reroll", "Remix", "Details", "Delete"], "This server's queue", "Your image usage", "Size"),
    "zh-CN": ("图片", ["重新生成", "改写重画", "详情", "删除"], "本服务器的队列", "你的图片用量", "尺寸"),
    "zh-TW": ("圖片", ["重新生成", "改寫重畫", "詳細資訊", "刪除"], "這個伺服器的佇列", "你的圖片用量", "尺寸"),
}


def fields_of(embed: dict) -> dict[str, str]:
    return {field["name"]: field["value"] for field in embed.get("fields", [])}


def labels(message) -> list[str]:
    return [c["label"] for c in walk_components(message.components) if c.get("type") == 2]


async def private_embed(harness: BotHarness, sent: SentInteraction) -> dict:
    message = await harness.reply(sent, lambda m: bool(m.embeds))
    assert message.ephemeral
    return message.embeds[0]


@pytest.mark.parametrize("locale", IN_EACH_LANGUAGE)
async def test_the_same_commands_answer_in_the_clients_language(harness: BotHarness, locale: str) -> None:
    title, buttons, queue_title, usage_title, size = IN_EACH_LANGUAGE[locale]
    await harness.start()
    sent = harness.slash("imagine", {"prompt": "A lighthouse at dusk"}, user_id=USER_ID, locale=locale)
    message = await harness.result(sent)
    [embed] = message.embeds
    assert embed["title"] == title
    assert size in fields_of(embed)
    assert labels(message) == buttons
    queue = await private_embed(harness, harness.slash("queue", user_id=USER_ID, locale=locale))
    assert queue["title"] == queue_title
    usage = await private_embed(harness, harness.slash("usage", user_id=USER_ID, locale=locale))
    assert usage["title"] == usage_title


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("zh-CN", f"你今天的 1 张图片额度已用完，额度将于 <t:{NEXT_UTC_MIDNIGHT}:R>重置。"),
        ("zh-TW", f"你今天的 1 張圖片額度已用完，額度將於 <t:{NEXT_UTC_MIDNIGHT}:R>重置。"),
        ("en-US", f"You have used your 1 image(s) for today; your limit resets <t:{NEXT_UTC_MIDNIGHT}:R>."),
    ],
)
async def test_a_refusal_names_the_limit_and_the_reset_time_in_the_users_language(
    harness: BotHarness, locale: str, expected: str
) -> None:
    """The reset is a Discord timestamp: the client shows it in its own language ("3小时后")."""
    await harness.start(wall_clock=lambda: NOON_UTC, user_daily_limit=1)
    await harness.result(harness.slash("imagine", {"prompt": "first"}, user_id=USER_ID, locale=locale))
    refused = harness.slash("imagine", {"prompt": "second"}, user_id=USER_ID, locale=locale)
    assert await private_refusal(harness, refused) == expected
    assert len(harness.api.requests) == 1


async def test_invalid_input_is_refused_in_the_users_language(harness: BotHarness) -> None:
    await harness.start()
    sent = harness.slash("imagine", {"prompt": "a kite", "style": "anime"}, user_id=USER_ID, locale="zh-CN")
    assert await private_refusal(harness, sent) == (
        "未知风格“anime”。请从以下选择：rapid、precise、text、photo、poster、text-poster、couplet。"
    )


async def test_a_client_language_without_a_catalogue_falls_back_to_the_servers(harness: BotHarness) -> None:
    await harness.start()
    harness.discord.set_guild_locale(harness.discord.guild_id, "zh-TW")
    french = await private_embed(harness, harness.slash("queue", user_id=USER_ID, locale="fr"))
    assert french["title"] == "這個伺服器的佇列"
    english = await private_embed(harness, harness.slash("queue", user_id=USER_ID, locale="en-GB"))
    assert english["title"] == "This server's queue"  # an English client reads English anywhere


def admin_slash(harness: BotHarness, subcommand: str, options: dict, *, locale: str, group: str | None = None):
    return harness.slash(
        "imagine-admin",
        options,
        subcommand_group=group,
        subcommand=subcommand,
        user_id=ADMIN_ID,
        permissions=ADMIN_PERMISSIONS,
        locale=locale,
    )


async def test_the_moderation_log_is_written_in_the_servers_language(harness: BotHarness) -> None:
    await harness.start()
    guild_id, log_channel = harness.discord.guild_id, harness.discord.guilds[0].channel_ids[1]
    harness.discord.set_guild_locale(guild_id, "zh-CN")
    options = {"channel": {"type": 7, "value": str(log_channel)}}
    resolved = {"channels": {str(log_channel): {"id": str(log_channel), "type": 0, "name": "log", "permissions": "0"}}}
    sent = harness.slash(
        "imagine-admin",
        options,
        subcommand="log-channel",
        user_id=ADMIN_ID,
        permissions=ADMIN_PERMISSIONS,
        locale="en-US",
        resolved=resolved,
    )
    answer = await harness.reply(sent, lambda m: bool(m.content))
    assert answer.content == f"<@{ADMIN_ID}> set the moderation log to <#{log_channel}>."  # the admin's client

    sent = admin_slash(harness, "set", {"daily": "5", "daily_budget": "12.5"}, group="limits", locale="en-US")
    answer = await harness.reply(sent, lambda m: bool(m.content))
    assert answer.content == f"<@{ADMIN_ID}> set images per user per day to 5, daily budget to ¥12.50."
    posts = await harness.discord.wait_for(
        lambda f: (found := f.channel_messages(log_channel)) and len(found) >= 2 and found
    )
    assert [p.content for p in posts[:2]] == [
        f"⚙️ <@{ADMIN_ID}> 将审核日志设为 <#{log_channel}>。",
        f"⚙️ <@{ADMIN_ID}> 将每位用户每天的图片数设为 5、每日预算设为 ¥12.50。",
    ]


async def test_an_image_posted_after_the_token_expired_speaks_the_servers_language(harness: BotHarness) -> None:
    harness.api.script(Reply.ok(delay=1.0))
    await harness.start()
    harness.discord.set_guild_locale(harness.discord.guild_id, "zh-TW")
    sent = harness.slash("imagine", {"prompt": "A lighthouse"}, user_id=USER_ID, locale="en-US")
    await harness.reply(sent, lambda m: "Generating" in m.content)  # the reply itself: the user's English
    harness.discord.expire_token(sent.id)
    [posted] = await harness.discord.wait_for(
        lambda f: [m for m in f.channel_messages(sent.channel_id) if not m.webhook and m.attachments]
    )
    assert posted.content == f"<@{USER_ID}> 你的圖片已完成。"
    assert posted.embeds[0]["title"] == "圖片" and labels(posted) == ["重新生成", "改寫重畫", "詳細資訊", "刪除"]


# -- prompts that keep the text exact ---------------------------------------------------------------


async def test_an_english_couplet_gets_the_specs_english_prompt(harness: BotHarness) -> None:
    await harness.start()
    options = {"left": "Spring returns to the earth", "right": "Sun shines on the land", "horizontal": "Renewal"}
    await harness.result(harness.slash("couplet", options, user_id=USER_ID))
    assert harness.api.requests[0].json["prompt"] == (
        "A Chinese couplet, left scroll 'Spring returns to the earth', right scroll 'Sun shines on the land', "
        "horizontal scroll 'Renewal', background is red Xuan paper, font is regular script in gold"
    )


async def test_a_chinese_couplet_of_unequal_lines_is_made_with_a_warning_and_details_show_its_prompt(
    harness: BotHarness,
) -> None:
    await harness.start()
    options = {"left": "春回大地千山秀", "right": "福满人间", "horizontal": "万象更新"}
    sent = harness.slash("couplet", options, user_id=USER_ID, locale="zh-CN")
    message = await harness.result(sent)
    prompt = (
        "一副中国春联，左侧竖联“春回大地千山秀”，右侧竖联“福满人间”，顶部横批“万象更新”，背景是红色宣纸，字体是金色楷书"
    )
    assert harness.api.requests[0].json["prompt"] == prompt
    warning = "⚠️ 左联 7 个字，右联 4 个字：对联的上下联通常字数相同。"
    assert fields_of(message.embeds[0])["提示"] == warning

    details = harness.discord.click(message.id, f"imagine:details:{sent.id}", user_id=USER_ID, locale="zh-CN")
    embed = await private_embed(harness, details)
    assert embed["title"] == f"任务 {sent.id} 的详情"
    assert fields_of(embed)["发送的提示词（由你填写的内容生成，可在 /imagine 中修改使用）"] == prompt


async def test_a_poster_in_a_named_language_keeps_its_text_exact_and_prompt_extend_off(harness: BotHarness) -> None:
    await harness.start()
    options = {"title": "Summer Sale", "subtitle": "全场五折", "background": "阳光海滩", "language": "zh"}
    await harness.result(harness.slash("poster", options, user_id=USER_ID, locale="zh-CN"))
    [request] = harness.api.requests
    assert (
        request.json["prompt"]
        == "一张海报，顶部标题“Summer Sale”，标题下方副标题“全场五折”，背景是阳光海滩，文字清晰工整"
    )
    assert request.json["parameters"]["prompt_extend"] is False  # the service may not rewrite the text


# -- autocomplete --------------------------------------------------------------------------------------


async def autocomplete(harness: BotHarness, name: str, options: dict, focused: str, **kw) -> list[dict]:
    sent = harness.discord.send_autocomplete(name, options, focused, **kw)
    [payload] = await harness.discord.wait_for(lambda f: f.callback_payloads(sent.id))
    assert payload["type"] == 8
    return payload["data"]["choices"]


async def test_style_autocomplete_describes_each_style_in_the_users_language(harness: BotHarness) -> None:
    await harness.start()
    choices = await autocomplete(harness, "imagine", {"prompt": "x", "style": ""}, "style", locale="zh-CN")
    assert [c["value"] for c in choices] == ["rapid", "precise", "text", "photo", "poster", "text-poster", "couplet"]
    assert choices[5]["name"] == "文字海报 — 竖版海报，文字须准确呈现。"
    assert all(len(c["name"]) <= 100 for c in choices)
    typed = await autocomplete(harness, "imagine", {"prompt": "x", "style": "海报"}, "style", locale="zh-CN")
    assert [c["value"] for c in typed] == ["poster", "text-poster"]
    poster = await autocomplete(harness, "poster", {"title": "x", "style": ""}, "style", locale="zh-TW")
    assert [c["value"] for c in poster] == ["poster", "text-poster", "precise"]
    assert poster[2]["name"] == "精確控制 — 照原樣使用你的提示詞，尺寸由你選擇。"


async def test_negative_prompt_autocomplete_offers_the_presets_then_the_users_own_within_25(
    harness: BotHarness,
) -> None:
    await harness.start()
    assert harness.bot is not None
    jobs = harness.bot.service.jobs
    for i in range(30):  # more of the user's own than Discord can show
        await jobs.insert(_job(9_000 + i, str(USER_ID), f"own negative {i:02d}"))
    await jobs.insert(_job(9_100, str(OTHER_ID), "someone else's"))
    await jobs.insert(_job(9_101, str(USER_ID), "blurred text"))  # a style's default, not written by the user
    await jobs.insert(_job(9_102, str(USER_ID), "x" * 150))  # too long for a choice's value

    choices = await autocomplete(
        harness, "imagine", {"prompt": "x", "negative_prompt": ""}, "negative_prompt", user_id=USER_ID
    )
    assert len(choices) == 25
    assert [c["name"].split(":")[0] for c in choices[:5]] == [
        "Portrait",
        "Landscape or photo",
        "Product",
        "Text",
        "General",
    ]
    own = [c["value"] for c in choices[5:]]
    assert own == [f"own negative {i:02d}" for i in range(29, 9, -1)]  # the most recent first
    assert choices[5]["name"] == "Recent: own negative 29"

    typed = await autocomplete(
        harness,
        "imagine",
        {"prompt": "x", "negative_prompt": "噪点"},
        "negative_prompt",
        user_id=USER_ID,
        locale="zh-CN",
    )
    assert typed == []  # nothing matches: Discord shows the typed text itself
    chinese = await autocomplete(
        harness,
        "imagine",
        {"prompt": "x", "negative_prompt": "人像"},
        "negative_prompt",
        user_id=USER_ID,
        locale="zh-CN",
    )
    assert [c["name"].split("：")[0] for c in chinese] == ["人像"]


def _job(job_id: int, requester: str, negative: str) -> NewJob:
    return NewJob(
        id=job_id,
        requester=requester,
        command="imagine",
        model="qwen-image-plus",
        prompt="p",
        size="1328*1328",
        negative_prompt=negative,
        prompt_extend=True,
        watermark=True,
        user_id=int(requester),
    )


async def test_the_synced_commands_carry_their_chinese_names(harness: BotHarness) -> None:
    await harness.start()
    commands = {c["name"]: c for c in harness.discord.synced_commands()}
    assert commands["imagine"]["name_localizations"] == {"zh-CN": "生成图片", "zh-TW": "生成圖片"}
    couplet = {o["name"]: o for o in commands["couplet"]["options"]}
    assert couplet["left"]["name_localizations"] == {"zh-CN": "左联", "zh-TW": "左聯"}
    sizes = {c["value"]: c for c in couplet["size"]["choices"]}
    assert sizes["1140*1472"]["name_localizations"] == {"zh-CN": "3:4 竖版 1140×1472", "zh-TW": "3:4 直式 1140×1472"}
