"""Every sentence people read, in their language: catalogues, locale choice and formatting.

Catalogues are gettext `.po` files (bot/locales/<locale>/messages.po) read once with Babel: the
format every translation tool speaks (Weblate, Crowdin, Transifex, Poedit), with keyed msgids
(`refusal.user_day`) and `{placeholder}` brace formatting. English is the source and the last
fallback; `tests/test_i18n.py` fails when a locale lacks a key or a placeholder differs.

`Text` is a sentence that remembers how to be said in another language: a `str` holding the
English (what the CLI, logs and the store see, unchanged), plus its key and parameters, so the
Discord edge renders it again in the reader's locale. Errors raised deep in the code carry one.

No discord import here: the locale a Discord interaction asks for arrives as its string code.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from babel import dates, numbers
from babel.messages.pofile import read_po

DEFAULT = "en"
#: the catalogues shipped, by Babel locale name (their folder under bot/locales/)
LOCALES = ("en", "zh_Hans", "zh_Hant")
#: Discord's locale codes that have a catalogue (English included: an English client in a Chinese
#: server reads English); any other code counts as unset
_DISCORD = {"en-US": "en", "en-GB": "en", "zh-CN": "zh_Hans", "zh-TW": "zh_Hant"}
#: the territory whose CLDR conventions format numbers and dates for each catalogue
_CLDR = {"en": "en", "zh_Hans": "zh_Hans_CN", "zh_Hant": "zh_Hant_TW"}
#: joins a list of names ("a, b" / "甲、乙"): CLDR's list patterns put "and" in, which our sentences do not want
_LIST_SEPARATOR = {"en": ", ", "zh_Hans": "、", "zh_Hant": "、"}
_DIR = Path(__file__).parent / "locales"


@functools.cache
def catalogue(locale: str) -> Mapping[str, str]:
    """key -> translated text of one locale, read once (fuzzy and empty entries are not translations)."""
    with (_DIR / locale / "messages.po").open("rb") as file:
        po = read_po(file, locale=_CLDR[locale])
    return {m.id: m.string for m in po if m.id and isinstance(m.id, str) and m.string and not m.fuzzy}


def resolve(interaction_locale: object = None, guild_locale: object = None) -> str:
    """The catalogue for a reader: the interaction's locale, else the server's, else English.

    Takes Discord's codes ("zh-CN", or a `discord.Locale`, whose value is the code). A locale
    without a catalogue counts as unset, so a server's Chinese still wins over a reader's French.
    """
    for code in (interaction_locale, guild_locale):
        found = _DISCORD.get(str(getattr(code, "value", code))) if code else None
        if found:
            return found
    return DEFAULT


# --- values formatted for the reader ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in fen, shown in yuan with ¥ and the locale's digit grouping."""

    fen: int


@dataclass(frozen=True, slots=True)
class Number:
    """A count shown with the locale's digit grouping (ids and years stay plain ints)."""

    value: int | float


@dataclass(frozen=True, slots=True)
class When:
    """A moment shown as the locale writes a date and time, in a server's time zone."""

    moment: datetime
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class Items:
    """Names joined the locale's way (", " in English, "、" in Chinese)."""

    names: tuple[str, ...]


def money(locale: str, fen: int) -> str:
    amount = Decimal(int(fen)).scaleb(-2)
    return "¥" + numbers.format_decimal(amount, format="#,##0.00", locale=_CLDR[locale])


def number(locale: str, value: int | float) -> str:
    return numbers.format_decimal(value, locale=_CLDR[locale])


def when(locale: str, moment: datetime, timezone: str = "UTC") -> str:
    local = dates.format_datetime(moment, "medium", tzinfo=dates.get_timezone(timezone), locale=_CLDR[locale])
    return f"{local} ({timezone})"


def _value(locale: str, value: Any) -> str:
    if isinstance(value, Text):
        return value.render(locale)
    if isinstance(value, Money):
        return money(locale, value.fen)
    if isinstance(value, Number):
        return number(locale, value.value)
    if isinstance(value, When):
        return when(locale, value.moment, value.timezone)
    if isinstance(value, Items):
        return _LIST_SEPARATOR[locale].join(_value(locale, name) for name in value.names)
    return str(value)


# --- messages ----------------------------------------------------------------------------------


def t(locale: str, key: str, /, **params: Any) -> str:
    """The sentence `key` in `locale` (English when that locale lacks it), parameters filled in.

    An unknown key is a bug, not a translation gap: it raises KeyError.
    """
    template = catalogue(locale).get(key) if locale != DEFAULT else None
    if template is None:
        template = catalogue(DEFAULT)[key]
    return template.format(**{name: _value(locale, value) for name, value in params.items()})


class Text(str):
    """An English sentence (the str itself) that can be said again in another locale.

    `Text("refusal.user_day", limit=5, resets="<t:1:R>")` equals the English sentence, so it can
    go wherever a str went (an error's message, a log line, a CLI answer); the Discord edge calls
    `render(locale)` on it. String operations on it give plain strs: build sentences as keys.
    """

    key: str
    params: Mapping[str, Any]

    def __new__(cls, key: str, /, **params: Any) -> Text:
        self = super().__new__(cls, t(DEFAULT, key, **params))
        self.key, self.params = key, params
        return self

    def render(self, locale: str) -> str:
        return t(locale, self.key, **self.params)

    def __reduce__(self) -> tuple[Any, ...]:  # a str subclass with keyword state: pickle it by key
        return (_rebuild, (self.key, dict(self.params)))


def _rebuild(key: str, params: dict[str, Any]) -> Text:
    return Text(key, **params)


def say(locale: str, text: str) -> str:
    """A message in `locale` when it is a Text; a plain str (a user's own words, a name) as it is."""
    return text.render(locale) if isinstance(text, Text) else text


def placeholders(template: str) -> frozenset[str]:
    """The {names} a template uses (for the catalogue check)."""
    return frozenset(name for _, name, _, _ in string.Formatter().parse(template) if name)


def items(names: Iterable[str]) -> Items:
    return Items(tuple(names))


def has(key: str) -> bool:
    """Whether the English catalogue has `key` (for names that may come from settings, e.g. sizes)."""
    return key in catalogue(DEFAULT)
