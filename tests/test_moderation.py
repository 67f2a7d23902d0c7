"""Prompt rules (bot/moderation.py): normalisation, obfuscated words, vetted regular expressions, fail closed."""

from __future__ import annotations

import pytest

from bot import moderation
from bot.errors import InvalidInput
from bot.moderation import PATTERN_MAX_CHARS, Rule, RuleSet, compile_rule, normalise

BAD = Rule(1, "word", "bad", "no bad words")
CHINESE = Rule(2, "word", "坏人", "no villains")


# -- normalise ---------------------------------------------------------------------------------------


def test_normalise_folds_full_width_letters_to_ascii_lower_case() -> None:
    assert normalise("ＢＡＤ") == "bad"


def test_normalise_removes_zero_width_and_bidi_characters() -> None:
    assert normalise("b\u200bad") == "bad"
    assert normalise("b\u200da\u200ed\u2060") == "bad"
    assert normalise("\ufeffbad") == "bad"


def test_normalise_casefolds_beyond_lower() -> None:
    assert normalise("STRASSE") == normalise("Straße") == "strasse"


def test_normalise_keeps_spaces_and_chinese() -> None:
    assert normalise("A 坏人 Here") == "a 坏人 here"


# -- word rules ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        "bad",
        "BAD",
        "Ｂａｄ",
        "b.a.d",
        "b a d",
        "b\u200bad",
        "b4d",
        "a bad idea",
        "so b-a-d!",
        "B\u00adA\u00adD",  # soft hyphens
    ],
)
def test_a_word_rule_matches_disguised_spellings(prompt: str) -> None:
    match = RuleSet([BAD]).check({"prompt": prompt})
    assert match is not None
    assert (match.rule, match.field, match.timed_out) == (BAD, "prompt", False)


@pytest.mark.parametrize("prompt", ["badge", "abad", "a badminton game", "good"])
def test_a_word_rule_does_not_match_inside_a_longer_word(prompt: str) -> None:
    assert RuleSet([BAD]).check({"prompt": prompt}) is None


def test_a_chinese_word_matches_inside_a_sentence_without_spaces() -> None:
    match = RuleSet([BAD, CHINESE]).check({"prompt": "画一个坏人在城市里"})
    assert match is not None and match.rule == CHINESE


def test_a_chinese_word_split_by_a_zero_width_space_still_matches() -> None:
    match = RuleSet([CHINESE]).check({"prompt": "一个坏\u200b人"})
    assert match is not None and match.rule == CHINESE


def test_a_multi_word_rule_matches_with_any_separator() -> None:
    rules = RuleSet([Rule(3, "word", "red cat", "no red cats")])
    assert rules.check({"prompt": "a RED-CAT on a roof"}) is not None
    assert rules.check({"prompt": "a redcat"}) is not None  # spaces in the rule are optional separators
    assert rules.check({"prompt": "a red dog and a cat"}) is None


# -- regex rules --------------------------------------------------------------------------------------


def test_a_regex_rule_compiles_and_matches_case_insensitively() -> None:
    compiled = compile_rule("regex", r"\bgor(e|y)\b")
    assert compiled.search("so GORY")
    rules = RuleSet([Rule(4, "regex", r"\bgor(e|y)\b", "no gore")])
    assert rules.check({"prompt": "Ｇｏｒｅ everywhere"}) is not None  # regex rules see normalised text too
    assert rules.check({"prompt": "Gorey the cat"}) is None


def test_an_invalid_regex_is_refused_naming_the_error() -> None:
    with pytest.raises(InvalidInput) as refused:
        compile_rule("regex", "(unclosed")
    assert refused.value.field == "pattern"
    assert "invalid" in refused.value.message
    assert "missing )" in refused.value.message


def test_an_exponential_pattern_is_refused_as_too_slow() -> None:
    with pytest.raises(InvalidInput, match="too slow"):
        compile_rule("regex", r"(a|aa)+$")


def test_a_nested_quantifier_pattern_is_refused_as_too_slow() -> None:
    with pytest.raises(InvalidInput, match="too slow"):
        compile_rule("regex", r"(a+)+$")


def test_an_accepted_rule_does_not_refuse_an_ordinary_prompt_of_allowed_length() -> None:
    # What the add-time vetting should guarantee: a rule that is accepted can screen any prompt up to
    # PROMPT_MAX_CHARS (800) within its time budget, so a harmless prompt is not refused as "timed out".
    try:
        compile_rule("regex", r"(\w+\s?)+$")  # the vetting every rule passes when it is added
    except InvalidInput:
        return  # refused when added: fine as well
    rules = RuleSet([Rule(5, "regex", r"(\w+\s?)+$", "x")])
    prompt = "一只可爱的橘猫在阳光下的窗台上睡觉" * 40 + "。"  # Chinese has no spaces: one long \w+ run
    assert len(prompt) <= 800
    assert rules.check({"prompt": prompt}) is None


@pytest.mark.parametrize("kind", ["word", "regex"])
def test_a_rule_longer_than_the_maximum_is_refused(kind: str) -> None:
    with pytest.raises(InvalidInput, match=f"longer than {PATTERN_MAX_CHARS}"):
        compile_rule(kind, "x" * (PATTERN_MAX_CHARS + 1))  # type: ignore[arg-type]
    compile_rule(kind, "x" * PATTERN_MAX_CHARS)  # type: ignore[arg-type]  # exactly the maximum is fine


@pytest.mark.parametrize("kind", ["word", "regex"])
def test_an_empty_rule_is_refused(kind: str) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        compile_rule(kind, "   ")  # type: ignore[arg-type]


# -- RuleSet.check --------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "title"])
def test_check_names_the_field_that_matched(field: str) -> None:
    fields = {"prompt": "a calm lake", "negative_prompt": "blurry", "title": "Spring sale"}
    fields[field] = "something b.a.d here"
    match = RuleSet([BAD]).check(fields)
    assert match is not None and match.field == field


def test_check_ignores_empty_and_missing_fields() -> None:
    assert RuleSet([BAD]).check({"prompt": "a calm lake", "negative_prompt": "", "subtitle": None}) is None


def test_check_returns_the_first_rule_broken() -> None:
    rules = RuleSet([BAD, CHINESE])
    match = rules.check({"prompt": "坏人 and bad"})
    assert match is not None and match.rule == BAD
    assert len(rules) == 2


def test_an_empty_rule_set_matches_nothing() -> None:
    assert RuleSet([]).check({"prompt": "bad"}) is None


def test_a_match_that_runs_out_of_time_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    # A catastrophic rule that slipped past the add-time vetting (here: vetting switched off).
    monkeypatch.setattr(moderation, "_PROBES", ())
    rule = Rule(9, "regex", r"(a|aa)+$", "no screams")
    rules = RuleSet([rule])
    match = rules.check({"prompt": "a calm lake", "negative_prompt": "a" * 60 + "!"})
    assert match is not None
    assert (match.rule, match.field, match.timed_out) == (rule, "negative_prompt", True)  # refused, not waved on
