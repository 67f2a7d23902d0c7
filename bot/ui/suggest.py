"""Autocomplete answers: styles with a one-line description, negative prompts to reuse.

Pure functions of what the user has typed, their locale and (for negative prompts) their own
recent ones, so they are tested without Discord. Discord shows at most 25 choices, each name and
string value at most 100 characters: anything longer is left out, never cut (a value is sent as is).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from discord.app_commands import Choice

from bot.i18n import DEFAULT, t
from bot.presets import NEGATIVE_SETS, STYLES

MAX_CHOICES = 25  # Discord's limit for an autocomplete answer
MAX_CHARS = 100  # a choice's name and string value
#: the styles' own negative prompts: applied by the style, not something a user wrote
STYLE_NEGATIVES = tuple(sorted({style.negative_prompt for style in STYLES.values() if style.negative_prompt}))


def _matches(current: str, *texts: str) -> bool:
    needle = current.strip().casefold()
    return not needle or any(needle in text.casefold() for text in texts)


def _name(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


def styles(current: str, locale: str = DEFAULT, *, only: Sequence[str] | None = None) -> list[Choice[str]]:
    """Every style (or those in `only`) whose name, label or description contains what was typed:
    "Text poster — Tall poster whose text must be rendered exactly." in the user's language."""
    choices = []
    for name in only or STYLES:
        label, description = t(locale, f"style.{name}"), t(locale, f"style.{name}.description")
        if _matches(current, name, label, description):
            choices.append(Choice(name=_name(f"{label} — {description}"), value=name))
    return choices[:MAX_CHOICES]


def negative_prompts(current: str, locale: str = DEFAULT, recent: Iterable[str] = ()) -> list[Choice[str]]:
    """The presets' sets first (named by subject in the user's language), then the user's own
    recent negative prompts, each once, those that contain what was typed."""
    choices: list[Choice[str]] = []
    seen: set[str] = set()
    for subject, value in NEGATIVE_SETS.items():
        label = t(locale, f"negative.{subject}")
        if _matches(current, label, value):
            choices.append(Choice(name=_name(t(locale, "negative.set", subject=label, value=value)), value=value))
            seen.add(value)
    for value in recent:
        if value not in seen and len(value) <= MAX_CHARS and _matches(current, value):
            choices.append(Choice(name=_name(t(locale, "negative.recent", value=value)), value=value))
            seen.add(value)
    return choices[:MAX_CHOICES]
