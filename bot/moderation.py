"""Prompt rules: words and regular expressions a guild refuses, checked before money is spent.

Text is normalised first so the usual disguises do not pass: full-width letters and other
compatibility forms (NFKC), case (casefold), invisible characters (zero-width spaces, bidi
marks) and common digit-for-letter swaps ("b4d"). A word rule also matches its letters split
by punctuation or spaces ("b.a.d", "b a d") but not inside a longer word ("badge"); a word in
a script without spaces (Chinese) matches anywhere.

Regular expressions come from admins, so they run under the `regex` module's timeout: a rule
that backtracks catastrophically is refused when it is added, and a match that still runs
over its time fails closed (the prompt is refused) instead of stalling the bot.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import regex

from bot.errors import InvalidInput
from bot.i18n import Text

RuleKind = Literal["word", "regex"]
PATTERN_MAX_CHARS = 200
MATCH_TIMEOUT_S = 0.05
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_SEPARATOR = r"[\W_]*"
# Probes as long as the longest screened text: nested quantifiers backtrack polynomially in the
# `regex` module, harmless on 40 characters and seconds long on 800 (a Chinese prompt has no
# spaces, so it is one long \w run).
_PROBE_CHARS = 800
_PROBES = tuple(
    (unit * _PROBE_CHARS)[:_PROBE_CHARS] + tail
    for unit, tail in (("a", "!"), ("ab", "!"), ("a ", "!"), ("0", "x"), ("字", "。"), ("a1_", "-"))
)


@dataclass(frozen=True, slots=True)
class Rule:
    id: int
    kind: RuleKind
    pattern: str
    reason: str  # what the user is told


@dataclass(frozen=True, slots=True)
class RuleMatch:
    rule: Rule
    field: str  # which input matched (prompt, negative_prompt, title...)
    timed_out: bool = False


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def _variants(text: str) -> tuple[str, ...]:
    plain = normalise(text)
    leet = plain.translate(_LEET)
    return (plain,) if leet == plain else (plain, leet)


def _has_spaceless_script(word: str) -> bool:
    return any(unicodedata.name(ch, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL")) for ch in word)


def compile_rule(kind: RuleKind, pattern: str, *, vet: bool = True) -> regex.Pattern[str]:
    """Compile a rule, and vet it (probes for catastrophic backtracking) when it is being added.

    InvalidInput says what is wrong with it. Stored rules were vetted when added, so reloading
    them skips the probes.
    """
    pattern = pattern.strip()
    if not pattern:
        raise InvalidInput(Text("input.rule_empty"), field="pattern")
    if len(pattern) > PATTERN_MAX_CHARS:
        raise InvalidInput(Text("input.rule_too_long", limit=PATTERN_MAX_CHARS), field="pattern")
    if kind == "word":
        letters = [ch for ch in normalise(pattern) if not ch.isspace()]
        body = _SEPARATOR.join(regex.escape(ch) for ch in letters)
        source = body if _has_spaceless_script(pattern) else rf"(?<![^\W_]){body}(?![^\W_])"
        return regex.compile(source, regex.IGNORECASE)
    try:
        compiled = regex.compile(pattern, regex.IGNORECASE)
    except regex.error as exc:
        raise InvalidInput(Text("input.regex_invalid", detail=exc), field="pattern") from None
    for probe in _PROBES if vet else ():
        try:
            compiled.search(probe, timeout=MATCH_TIMEOUT_S)
        except TimeoutError:
            raise InvalidInput(Text("input.regex_slow"), field="pattern") from None
    return compiled


class RuleSet:
    """A guild's rules, compiled once (rebuilt when an admin changes them)."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self._compiled = [(rule, compile_rule(rule.kind, rule.pattern, vet=False)) for rule in rules]

    def __len__(self) -> int:
        return len(self._compiled)

    def check(self, fields: Mapping[str, str | None]) -> RuleMatch | None:
        """The first rule any field breaks, or None. CPU-bound: call it off the event loop."""
        texts = [(name, variant) for name, value in fields.items() if value for variant in _variants(value)]
        for rule, compiled in self._compiled:
            for name, text in texts:
                try:
                    if compiled.search(text, timeout=MATCH_TIMEOUT_S):
                        return RuleMatch(rule, name)
                except TimeoutError:
                    return RuleMatch(rule, name, timed_out=True)  # fail closed
        return None
