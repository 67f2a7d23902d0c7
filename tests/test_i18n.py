"""bot/i18n.py and the catalogues: every key in every locale with the same placeholders, every key
the code uses present, locale resolution, and numbers, money and dates formatted per locale."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot import i18n, presets
from bot.i18n import Money, Number, Text, When, catalogue, placeholders, resolve, t
from bot.storage.jobs import UNFINISHED

ROOT = Path(__file__).resolve().parent.parent
OTHERS = [locale for locale in i18n.LOCALES if locale != i18n.DEFAULT]


# -- the catalogue check -------------------------------------------------------------------------


@pytest.mark.parametrize("locale", OTHERS)
def test_every_locale_has_every_key_and_nothing_else(locale: str) -> None:
    english, other = set(catalogue("en")), set(catalogue(locale))
    assert sorted(english - other) == [], f"missing in {locale}"
    assert sorted(other - english) == [], f"{locale} has keys English does not"


@pytest.mark.parametrize("locale", OTHERS)
def test_every_translation_keeps_the_placeholders(locale: str) -> None:
    differ = {
        key: (sorted(placeholders(text)), sorted(placeholders(catalogue(locale)[key])))
        for key, text in catalogue("en").items()
        if placeholders(text) != placeholders(catalogue(locale).get(key, ""))
    }
    assert differ == {}


@pytest.mark.parametrize("locale", OTHERS)
def test_translations_are_not_english_left_in_place(locale: str) -> None:
    """A copied English sentence is a missing translation; names, sizes and formats may stay."""
    allowed = re.compile(r"^(\{[a-z_]+\}|[\d:×*/ ]+|.*\{[a-z_]+\} s)$|^size\.")
    same = [
        key
        for key, text in catalogue("en").items()
        if catalogue(locale)[key] == text and re.search(r"[a-z]{3}", text) and not allowed.search(text)
    ]
    assert same == []


def test_placeholders_are_what_the_check_compares() -> None:
    assert placeholders("You have used your {limit} image(s); resets {resets}.") == {"limit", "resets"}
    assert placeholders("你今天的额度已用完，将于 {resets}重置。") == {"resets"}  # {limit} lost: the check fails it


def _keys_in_code() -> set[str]:
    pattern = re.compile(r"""\b(?:Text|t|has)\((?:[a-z_.]+, )?"([a-z_-]+\.[a-z_.*-]+)"|key="([a-z_.-]+)\"""")
    found: set[str] = set()
    for path in [*ROOT.joinpath("bot").rglob("*.py"), *ROOT.joinpath("cogs").rglob("*.py")]:
        for match in pattern.finditer(path.read_text(encoding="utf-8")):
            found.add(match[1] or match[2])
    return found


def test_every_key_the_code_names_is_in_the_english_catalogue() -> None:
    keys = _keys_in_code()
    assert len(keys) > 150  # the scan finds them
    assert sorted(keys - set(catalogue("en"))) == []


def test_every_key_built_from_a_name_is_in_the_catalogue() -> None:
    """Keys the code builds at run time: styles, sizes, states, negative sets, limits, titles, buttons."""
    built = {
        *(f"style.{name}" for name in presets.STYLES),
        *(f"style.{name}.description" for name in presets.STYLES),
        *(f"size.{size.value}" for size in presets.SIZES),
        *(f"state.{state}" for state in (*UNFINISHED, "delivered", "failed")),
        *(f"negative.{subject}" for subject in presets.NEGATIVE_SETS),
        *(f"refusal.{scope}" for scope in ("user_day", "user_month", "guild_day_fen", "guild_month_fen")),
        *(f"embed.title_{kind}" for kind in ("image", "poster", "couplet", "reroll")),
        *(f"button.{action}" for action in ("reroll", "details", "delete")),
        *(f"field.{name}" for name in ("prompt", "negative_prompt", "title", "subtitle", "background", "left")),
        *(f"field.{name}" for name in ("right", "horizontal", "font", "language")),
        "hint.prompt",
        "hint.title",
    }
    assert sorted(built - set(catalogue("en"))) == []


def test_the_english_labels_of_sizes_and_styles_are_the_presets_own() -> None:
    for size in presets.SIZES:
        assert t("en", f"size.{size.value}") == size.label
    for style in presets.STYLES.values():
        assert (t("en", f"style.{style.name}"), t("en", f"style.{style.name}.description")) == (
            style.label,
            style.description,
        )


# -- choosing a locale -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interaction", "guild", "expected"),
    [
        ("zh-CN", "en-US", "zh_Hans"),
        ("zh-TW", None, "zh_Hant"),
        ("en-GB", "zh-CN", "en"),  # an English client reads English, even in a Chinese server
        ("fr", "zh-TW", "zh_Hant"),  # a language without a catalogue falls back to the server's
        ("fr", "de", "en"),
        (None, None, "en"),
    ],
)
def test_the_interaction_locale_then_the_server_then_english(interaction, guild, expected) -> None:
    assert resolve(interaction, guild) == expected


def test_discord_locale_objects_resolve_like_their_codes() -> None:
    import discord

    assert resolve(discord.Locale.chinese, None) == "zh_Hans"
    assert resolve(discord.Locale.taiwan_chinese, discord.Locale.american_english) == "zh_Hant"


# -- Text and formatting -----------------------------------------------------------------------------


def test_text_is_the_english_sentence_and_renders_in_other_locales() -> None:
    text = Text("refusal.user_day", limit=Number(5), resets="<t:1764979200:R>")
    assert text == "You have used your 5 image(s) for today; your limit resets <t:1764979200:R>."
    assert text.render("zh_Hans") == "你今天的 5 张图片额度已用完，额度将于 <t:1764979200:R>重置。"
    assert text.render("zh_Hant") == "你今天的 5 張圖片額度已用完，額度將於 <t:1764979200:R>重置。"


def test_nested_texts_render_in_the_outer_locale() -> None:
    text = Text("input.empty", name=Text("field.title"), hint=Text("hint.title"))
    assert text == "The title is empty: give the poster a title."
    assert text.render("zh_Hans") == "标题为空：给海报起个标题。"


def test_an_unknown_key_is_a_bug() -> None:
    with pytest.raises(KeyError):
        t("zh_Hans", "no.such.key")


@pytest.mark.parametrize(
    ("locale", "money", "number"),
    [("en", "¥1,234.56", "12,345"), ("zh_Hans", "¥1,234.56", "12,345"), ("zh_Hant", "¥1,234.56", "12,345")],
)
def test_money_is_yuan_with_the_locales_grouping(locale: str, money: str, number: str) -> None:
    assert i18n.money(locale, 123456) == money
    assert i18n.money(locale, 18) == "¥0.18"
    assert t(locale, "usage.spent_no_cap", spent=Money(18)).count("¥0.18") == 1
    assert i18n.number(locale, 12345) == number


def test_dates_are_written_the_locales_way_in_the_servers_time_zone() -> None:
    midnight_shanghai = datetime(2026, 12, 5, 16, 0, tzinfo=UTC)
    assert i18n.when("zh_Hans", midnight_shanghai, "Asia/Shanghai") == "2026年12月6日 00:00:00 (Asia/Shanghai)"
    assert i18n.when("en", midnight_shanghai, "UTC") == "Dec 5, 2026, 4:00:00\u202fPM (UTC)"
    assert i18n.when("zh_Hant", midnight_shanghai, "Asia/Taipei").startswith("2026年12月6日")
    line = t("zh_Hans", "blocks.line", user=1, until=When(midnight_shanghai, "Asia/Shanghai"), reason="x")
    assert line == "<@1> 直到 2026年12月6日 00:00:00 (Asia/Shanghai)：x"


def test_lists_are_joined_the_locales_way() -> None:
    text = Text("input.style_unknown", value="anime", choices=i18n.items(["rapid", "photo"]))
    assert text == "Unknown style 'anime'. Choose one of: rapid, photo."
    assert text.render("zh_Hans") == "未知风格“anime”。请从以下选择：rapid、photo。"
