"""bot.presets: the spec's tables, request resolution, prompt builders, validation, cache keys."""

from __future__ import annotations

import dataclasses
import re

import pytest

from bot.errors import InvalidInput
from bot.presets import (
    DEFAULT_SIZE,
    DEFAULT_STYLE,
    NEGATIVE_SETS,
    SIZES,
    STYLES,
    ImageParams,
    cache_key,
    cache_key_material,
    couplet_prompt,
    get_style,
    parse_size,
    poster_prompt,
    resolve_params,
    size_label,
    validate_size,
    validate_text,
)

SPEC_SIZES = ["1328*1328", "1664*928", "928*1664", "1472*1140", "1140*1472"]
MODEL = "qwen-image-plus"

# --- sizes ---------------------------------------------------------------------------------


def test_sizes_are_the_spec_sizes_in_order_with_matching_dimensions():
    assert [s.value for s in SIZES] == SPEC_SIZES
    assert [s.ratio for s in SIZES] == ["1:1", "16:9", "9:16", "4:3", "3:4"]
    for s in SIZES:
        assert s.value == f"{s.width}*{s.height}"


def test_size_labels_are_readable_and_fit_a_discord_choice_name():
    assert size_label("1664*928") == "16:9 widescreen 1664×928"
    assert all(0 < len(s.label) <= 100 and s.ratio in s.label for s in SIZES)


def test_default_size_is_square():
    assert DEFAULT_SIZE == "1328*1328"


def test_size_label_falls_back_to_the_value_for_an_operator_size():
    assert size_label("1024*1024") == "1024*1024"


@pytest.mark.parametrize("text", ["1328*1328", "1328x1328", "1328X1328", "1328×1328", " 1328 * 1328 "])
def test_parse_size_accepts_star_x_and_times_sign(text):
    assert parse_size(text) == (1328, 1328)


@pytest.mark.parametrize("text", ["", "1328", "1328*", "a*b", "1328-1328", "0*100", "-5*5", "1.5*2"])
def test_parse_size_refuses_other_shapes(text):
    with pytest.raises(InvalidInput) as exc:
        parse_size(text)
    assert exc.value.field == "size"


def test_validate_size_normalises_to_star():
    assert validate_size("1664x928", SPEC_SIZES) == "1664*928"


def test_unknown_size_is_refused_with_a_message_listing_every_size():
    with pytest.raises(InvalidInput) as exc:
        validate_size("800*600", SPEC_SIZES)
    assert exc.value.field == "size"
    assert exc.value.message.startswith("Unknown size '800*600'. Choose one of: 1328*1328 (1:1 square")
    for s in SIZES:
        assert f"{s.value} ({s.label})" in exc.value.message


def test_validate_size_respects_an_operator_list():
    assert validate_size("1024*1024", ["1024*1024"]) == "1024*1024"
    with pytest.raises(InvalidInput, match=r"Choose one of: 1024\*1024\.$"):
        validate_size("1328*1328", ["1024*1024"])


# --- styles --------------------------------------------------------------------------------

SPEC_STYLES = {  # name: (size, prompt_extend, watermark, negative_prompt), from the spec table
    "rapid": ("1328*1328", True, True, ""),
    "precise": (None, False, False, ""),
    "text": ("1328*1328", False, True, "blurred text"),
    "photo": ("1664*928", False, False, "blur, low quality, noise"),
    "poster": ("928*1664", True, False, "messy, low quality"),
    "text-poster": ("928*1664", False, False, "blurred text"),
    "couplet": ("1140*1472", False, True, "blurred text, typos"),
}


def test_styles_are_listed_in_spec_order():
    assert list(STYLES) == list(SPEC_STYLES)
    assert DEFAULT_STYLE == "rapid"


@pytest.mark.parametrize("name", list(SPEC_STYLES))
def test_style_values_match_the_spec_table(name):
    s = STYLES[name]
    assert (s.size, s.prompt_extend, s.watermark, s.negative_prompt) == SPEC_STYLES[name]
    assert s.name == name and 0 < len(s.label) <= 100 and s.description


@pytest.mark.parametrize("name", list(SPEC_STYLES))
def test_resolving_a_style_applies_its_values(name):
    size, extend, watermark, negative = SPEC_STYLES[name]
    p = resolve_params("a cat", style=name)
    assert p == ImageParams("a cat", size or DEFAULT_SIZE, negative, extend, watermark, name)


def test_get_style_ignores_case_and_spaces():
    assert get_style(" Text-Poster ").name == "text-poster"


def test_unknown_style_is_refused_naming_the_valid_styles():
    with pytest.raises(InvalidInput) as exc:
        get_style("anime")
    assert exc.value.field == "style"
    assert exc.value.message == (
        "Unknown style 'anime'. Choose one of: rapid, precise, text, photo, poster, text-poster, couplet."
    )


def test_styles_cannot_be_mutated():
    with pytest.raises(TypeError):
        STYLES["rapid"] = STYLES["text"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        STYLES["rapid"].watermark = False  # type: ignore[misc]


def test_negative_sets_match_the_spec():
    assert dict(NEGATIVE_SETS) == {
        "portrait": "blur, low quality, distortion, deformation, extra limbs, wrong proportions, ugly",
        "photo": "blur, noise, overexposure, underexposure, low resolution, watermark",
        "product": "blur, heavy shadows, excessive reflection, color distortion, messy background",
        "text": "blurred text, typos, distorted font, unclear strokes",
        "general": "blur, noise, low resolution, pixelated",
    }


# --- resolve_params ------------------------------------------------------------------------


def test_default_request_is_rapid_creation():
    assert resolve_params("  a cute orange kitten ") == ImageParams(
        "a cute orange kitten", "1328*1328", "", True, True, "rapid"
    )


def test_explicit_arguments_win_over_the_style():
    p = resolve_params(
        "a cat", style="photo", size="928*1664", negative_prompt="dogs", prompt_extend=True, watermark=True
    )
    assert (p.size, p.negative_prompt, p.prompt_extend, p.watermark) == ("928*1664", "dogs", True, True)


def test_explicit_false_wins_over_a_true_style_value():
    p = resolve_params("a cat", style="rapid", prompt_extend=False, watermark=False)
    assert (p.prompt_extend, p.watermark) == (False, False)


def test_explicit_empty_negative_prompt_clears_the_styles():
    assert resolve_params("a cat", style="photo", negative_prompt="").negative_prompt == ""
    assert resolve_params("a cat", style="photo", negative_prompt="   ").negative_prompt == ""


def test_explicit_negative_prompt_is_stripped():
    assert resolve_params("a cat", negative_prompt="  blur ").negative_prompt == "blur"


def test_precise_style_uses_the_requested_size():
    assert resolve_params("a cat", style="precise", size="1472*1140").size == "1472*1140"


def test_precise_style_without_a_size_uses_the_default_size():
    assert resolve_params("a cat", style="precise", default_size="1140*1472").size == "1140*1472"


def test_resolve_refuses_an_unknown_size():
    with pytest.raises(InvalidInput, match=r"^Unknown size '800\*600'"):
        resolve_params("a cat", size="800*600")


def test_resolve_refuses_an_unknown_style():
    with pytest.raises(InvalidInput, match="^Unknown style 'anime'"):
        resolve_params("a cat", style="anime")


def test_resolve_refuses_a_negative_prompt_over_its_limit():
    with pytest.raises(InvalidInput) as exc:
        resolve_params("a cat", negative_prompt="x" * 11, negative_max_chars=10)
    assert exc.value.field == "negative_prompt"


def test_resolve_checks_a_built_prompt_against_the_prompt_limit():
    prompt = poster_prompt("T" * 200, "S" * 200, "B" * 200)
    with pytest.raises(InvalidInput, match=r"^The prompt is \d+ characters long; the limit is 500\."):
        resolve_params(prompt, style="poster", prompt_max_chars=500)


# --- validation ----------------------------------------------------------------------------


def test_empty_prompt_is_refused_with_a_hint():
    with pytest.raises(InvalidInput) as exc:
        validate_text("", field="prompt", max_chars=800)
    assert exc.value.message == "The prompt is empty: describe the picture you want."
    assert exc.value.field == "prompt"


def test_whitespace_only_prompt_is_refused():
    with pytest.raises(InvalidInput, match="is empty"):
        resolve_params(" \u3000  ")


def test_optional_empty_text_is_allowed():
    assert validate_text(None, field="negative_prompt", max_chars=5, required=False) == ""


def test_text_at_the_limit_is_accepted():
    assert validate_text("x" * 800, field="prompt", max_chars=800) == "x" * 800


def test_text_one_over_the_limit_is_refused_with_the_counts():
    with pytest.raises(InvalidInput) as exc:
        validate_text("x" * 801, field="prompt", max_chars=800)
    assert exc.value.message == "The prompt is 801 characters long; the limit is 800. Shorten it and try again."


def test_surrounding_whitespace_does_not_count_towards_the_limit():
    assert validate_text("  xxxx  ", field="prompt", max_chars=4) == "xxxx"


def test_chinese_characters_count_as_one_each():
    text = "春回大地" * 200  # 800 characters, 2,400 bytes of UTF-8
    assert validate_text(text, field="prompt", max_chars=800) == text
    with pytest.raises(InvalidInput, match="is 801 characters long"):
        validate_text(text + "春", field="prompt", max_chars=800)


@pytest.mark.parametrize("char", ["\n", "\t", "\r", "\x00", "\x07", "\x1b", "\x7f", "\x85"])
def test_control_characters_are_refused(char):
    with pytest.raises(InvalidInput) as exc:
        validate_text(f"a{char}b", field="negative_prompt", max_chars=100)
    assert exc.value.field == "negative_prompt"
    assert exc.value.message == (
        f"The negative prompt contains a control character (U+{ord(char):04X}); remove it and try again."
    )


@pytest.mark.parametrize("code", [*range(0x202A, 0x202F), *range(0x2066, 0x206A)])
def test_bidi_controls_are_refused(code):
    with pytest.raises(InvalidInput, match=re.escape(f"(U+{code:04X}); remove it")):
        validate_text(f"abc{chr(code)}def", field="prompt", max_chars=100)


def test_lone_surrogate_is_refused():
    with pytest.raises(InvalidInput, match=r"U\+D800"):
        validate_text("a\ud800b", field="prompt", max_chars=100)


def test_ordinary_unicode_is_accepted():
    text = "Ein Café, 春回大地, emoji 🐱, zero-width joiner 👩\u200d💻"
    assert validate_text(text, field="prompt", max_chars=100) == text


# --- prompt builders -----------------------------------------------------------------------


def test_poster_prompt_matches_the_spec_example():
    assert poster_prompt("Summer Sale", "50% off site-wide", "a fresh beach scene") == (
        "A poster with the title 'Summer Sale' and subtitle '50% off site-wide', background is a fresh beach scene"
    )


def test_poster_prompt_omits_absent_clauses():
    assert poster_prompt("Summer Sale") == "A poster with the title 'Summer Sale'"
    assert poster_prompt("Sale", background="a beach") == "A poster with the title 'Sale', background is a beach"
    assert poster_prompt("Sale", subtitle=" ") == "A poster with the title 'Sale'"


def test_couplet_prompt_matches_the_spec_example():
    assert couplet_prompt(
        "Spring returns to the earth, thousands of mountains are beautiful",
        "Sun shines on the divine land, all industries prosper",
        "Everything is renewed",
    ) == (
        "A Chinese couplet, left scroll 'Spring returns to the earth, thousands of mountains are beautiful', "
        "right scroll 'Sun shines on the divine land, all industries prosper', "
        "horizontal scroll 'Everything is renewed', background is red Xuan paper, "
        "font is regular script in gold"
    )


def test_couplet_prompt_uses_given_background_and_font():
    assert couplet_prompt("Spring returns", "Joy fills", "Renewal", "gold foil", "clerical script").endswith(
        "horizontal scroll 'Renewal', background is gold foil, font is clerical script"
    )


def test_inner_straight_quotes_become_typographic():
    assert poster_prompt("Mom's Diner", "Joe's 'best'") == (
        "A poster with the title 'Mom\u2019s Diner' and subtitle 'Joe\u2019s \u2019best\u2019'"
    )
    assert "left scroll 'It\u2019s spring'" in couplet_prompt("It's spring", "b", "c")


@pytest.mark.parametrize(
    ("args", "field"),
    [(("", "b", "c"), "left"), (("a", " ", "c"), "right"), (("a", "b", ""), "horizontal")],
)
def test_couplet_requires_every_scroll(args, field):
    with pytest.raises(InvalidInput, match="is empty") as exc:
        couplet_prompt(*args)
    assert exc.value.field == field


def test_poster_requires_a_title():
    with pytest.raises(InvalidInput) as exc:
        poster_prompt("  ")
    assert exc.value.field == "title"
    assert exc.value.message == "The title is empty: give the poster a title."


def test_builder_field_over_200_chars_is_refused():
    assert poster_prompt("x" * 200)
    with pytest.raises(InvalidInput, match="the limit is 200") as exc:
        poster_prompt("x", background="x" * 201)
    assert exc.value.field == "background"


def test_builder_field_with_a_control_character_is_refused():
    with pytest.raises(InvalidInput, match="The font contains a control character") as exc:
        couplet_prompt("a", "b", "c", font="gold\nred")
    assert exc.value.field == "font"


# --- cache key -----------------------------------------------------------------------------

BASE = ImageParams("a cat", "1328*1328", "blur", True, True, "rapid")


def test_cache_key_is_a_sha256_hex_digest():
    assert re.fullmatch(r"[0-9a-f]{64}", cache_key(BASE, model=MODEL))


def test_cache_key_is_equal_for_equal_params():
    same = ImageParams("a cat", "1328*1328", "blur", True, True, "rapid")
    assert cache_key(same, model=MODEL) == cache_key(BASE, model=MODEL)


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "a dog"},
        {"size": "1664*928"},
        {"negative_prompt": ""},
        {"prompt_extend": False},
        {"watermark": False},
    ],
)
def test_cache_key_changes_when_any_parameter_changes(change):
    assert cache_key(dataclasses.replace(BASE, **change), model=MODEL) != cache_key(BASE, model=MODEL)


def test_cache_key_changes_with_the_model():
    assert cache_key(BASE, model="other-model") != cache_key(BASE, model=MODEL)


def test_cache_key_ignores_the_style():
    text = resolve_params("a sign", style="text")
    rapid = resolve_params("a sign", style="rapid", prompt_extend=False, negative_prompt="blurred text")
    assert (text.style, rapid.style) == ("text", "rapid")
    assert cache_key(text, model=MODEL) == cache_key(rapid, model=MODEL)


def test_cache_key_material_cannot_collide_across_field_boundaries():
    a = dataclasses.replace(BASE, prompt="a_b", negative_prompt="c")
    b = dataclasses.replace(BASE, prompt="a", negative_prompt="b_c")
    c = dataclasses.replace(BASE, prompt='a","1328*1328', negative_prompt="x")
    keys = {cache_key_material(p, MODEL) for p in (a, b, c)}
    assert len(keys) == 3
    assert len({cache_key(p, model=MODEL) for p in (a, b, c)}) == 3


def test_cache_key_material_keeps_the_spec_order_then_watermark_and_model():
    material = cache_key_material(BASE, MODEL)
    assert material.endswith('"a cat","1328*1328","blur",true,true,"qwen-image-plus"]')
