"""Slash commands in the reader's language: discord.py's Translator backed by the catalogues.

Discord shows a command's name, description, options and choices in the user's client language
when the command was synced with localisations for it. Each string's key comes from where it
sits in the tree (`cmd.<command path>.name`, `cmd.<command path>.opt.<option>.description`...)
or, for a choice, from the `key` its `locale_str` carries. English is the tree's own text;
only locales with a catalogue get localisations, and a missing key leaves Discord on English.
"""

from __future__ import annotations

from discord import Locale, app_commands
from discord.app_commands import TranslationContextLocation as Where
from discord.app_commands import TranslationContextTypes, locale_str

from bot import i18n

_COMMAND = {Where.command_name: "name", Where.command_description: "description"}
_GROUP = {Where.group_name: "name", Where.group_description: "description"}
_OPTION = {Where.parameter_name: "name", Where.parameter_description: "description"}


def key_of(string: locale_str, context: TranslationContextTypes) -> str | None:
    """The catalogue key of a string of the command tree (None: not ours to translate)."""
    if "key" in string.extras:
        return string.extras["key"]
    where, data = context.location, context.data
    if where in _COMMAND or where in _GROUP:
        part = _COMMAND.get(where) or _GROUP[where]
        return f"cmd.{data.qualified_name.replace(' ', '.')}.{part}"
    if where in _OPTION:
        return f"cmd.{data.command.qualified_name.replace(' ', '.')}.opt.{data.name}.{_OPTION[where]}"
    if where is Where.choice_name:
        return f"choice.{data.value}"
    return None


class CatalogueTranslator(app_commands.Translator):
    async def translate(self, string: locale_str, locale: Locale, context: TranslationContextTypes) -> str | None:
        catalogue = i18n.resolve(locale)
        if catalogue == i18n.DEFAULT:
            return None  # English is the tree's own text
        key = key_of(string, context)
        return i18n.catalogue(catalogue).get(key) if key else None
