"""The slash commands in every catalogue's language: the whole tree rendered as Discord receives it,
checked against Discord's limits, and the sync digest, which must change with a translation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import regex

from bot import i18n
from bot.app import EXTENSIONS, ImagineBot, commands_digest
from bot.config import load_settings
from bot.translator import CatalogueTranslator

# Discord's rule for chat-input command and option names (lowercase where the script has case)
NAME = regex.compile(r"^[-_\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$")
LOCALES = ("zh-CN", "zh-TW")


@pytest.fixture
async def tree_bot() -> AsyncIterator[ImagineBot]:
    """The bot's command tree with the translator, as setup_hook builds it (no connection, no store)."""
    settings = load_settings(_env_file=None, discord_token="x", nebula_api_key="k")
    bot = ImagineBot(settings, serve=False)
    await bot.tree.set_translator(CatalogueTranslator())
    for extension in EXTENSIONS:
        await bot.load_extension(extension)
    yield bot  # never logged in: nothing to close


async def payload(bot: ImagineBot) -> list[dict[str, Any]]:
    assert bot.tree.translator is not None
    return [await c.get_translated_payload(bot.tree, bot.tree.translator) for c in bot.tree.get_commands()]


def walk(commands: list[dict[str, Any]], path: str = "") -> Iterator[tuple[str, dict[str, Any], str]]:
    """(path, item, kind) for every command, subcommand, group and option; choices as kind 'choice';
    context menus (top-level types 2 and 3: user and message commands) as kind 'menu'."""
    for item in commands:
        here = f"{path}/{item['name']}"
        kind = "command" if item.get("type", 1) in (1, 2) and "required" not in item else "option"
        if not path and item.get("type", 1) in (2, 3):
            kind = "menu"
        yield here, item, kind
        for choice in item.get("choices", []):
            yield f"{here}={choice['value']}", choice, "choice"
        yield from walk(item.get("options", []), here)


def in_locale(item: dict[str, Any], field: str, locale: str) -> str:
    return (item.get(f"{field}_localizations") or {}).get(locale, item[field])


@pytest.mark.parametrize("locale", [None, *LOCALES])
async def test_every_name_and_description_obeys_discords_rules(tree_bot: ImagineBot, locale: str | None) -> None:
    commands = await payload(tree_bot)
    problems = []
    for path, item, kind in walk(commands):
        name = item["name"] if locale is None else in_locale(item, "name", locale)
        if kind == "choice":
            if not 1 <= len(name) <= 100:
                problems.append((path, "choice name length", name))
            continue
        if kind == "menu":  # any case and spaces, at most 32 characters, no description
            if not 1 <= len(name) <= 32 or "description" in item:
                problems.append((path, "menu name", name))
            continue
        if not NAME.match(name) or name != name.lower():
            problems.append((path, "name", name))
        description = item["description"] if locale is None else in_locale(item, "description", locale)
        if not 1 <= len(description) <= 100:
            problems.append((path, "description length", description))
    assert problems == []
    assert sum(1 for _ in walk(commands)) > 80  # the walk sees the whole tree


@pytest.mark.parametrize("locale", LOCALES)
async def test_every_string_of_the_tree_is_translated(tree_bot: ImagineBot, locale: str) -> None:
    untranslated = []
    for path, item, kind in walk(await payload(tree_bot)):
        fields = ("name",) if kind in ("choice", "menu") else ("name", "description")
        untranslated += [(path, field) for field in fields if locale not in (item.get(f"{field}_localizations") or {})]
    assert untranslated == []


@pytest.mark.parametrize("locale", LOCALES)
async def test_option_names_stay_unique_within_a_command_in_each_language(tree_bot: ImagineBot, locale: str) -> None:
    def check(items: list[dict[str, Any]], path: str) -> None:
        names = [in_locale(i, "name", locale) for i in items]
        assert len(names) == len(set(names)), (path, names)
        for item in items:
            check(item.get("options", []), f"{path}/{item['name']}")

    check(await payload(tree_bot), "")


async def test_the_english_catalogue_says_what_the_tree_says(tree_bot: ImagineBot) -> None:
    """English is the tree's own text; its catalogue entries (the translators' source) must not drift."""
    english = i18n.catalogue("en")
    seen = {}

    class Recorder(CatalogueTranslator):
        async def translate(self, string, locale, context):
            from bot.translator import key_of

            seen[key_of(string, context)] = string.message
            return None

    for command in tree_bot.tree.get_commands():
        await command.get_translated_payload(tree_bot.tree, Recorder())
    assert len(seen) > 100
    assert {key: english.get(key) for key in seen} == seen


async def test_the_sync_digest_includes_the_translations(tree_bot: ImagineBot, monkeypatch) -> None:
    with_translations = await commands_digest(tree_bot.tree)
    assert with_translations == await commands_digest(tree_bot.tree)  # stable

    changed = dict(i18n.catalogue("zh_Hant"))
    changed["cmd.imagine.description"] = "根據文字生成圖片"
    real = i18n.catalogue
    monkeypatch.setattr(i18n, "catalogue", lambda locale: changed if locale == "zh_Hant" else real(locale))
    assert await commands_digest(tree_bot.tree) != with_translations  # a changed translation syncs again

    await tree_bot.tree.set_translator(None)
    assert await commands_digest(tree_bot.tree) != with_translations
