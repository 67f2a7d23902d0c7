"""Sizes, styles, negative prompts, prompt builders, validation and cache keys.

Everything here is a pure function or a frozen value (no I/O, no discord, no httpx), so the
slash commands, the CLI and the tests all resolve a request the same way. The tables restate
``shared/spec/image-api.md`` ("Presets from the documentation"); validation runs here because
it must refuse bad input *before* any money is spent on the upstream call.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from bot.errors import InvalidInput
from bot.i18n import Text, has, items

# --- sizes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeOption:
    """One size the API accepts; ``value`` is sent upstream, ``label`` is shown to people."""

    value: str
    width: int
    height: int
    ratio: str
    label: str


SIZES: tuple[SizeOption, ...] = (
    SizeOption("1328*1328", 1328, 1328, "1:1", "1:1 square 1328×1328"),
    SizeOption("1664*928", 1664, 928, "16:9", "16:9 widescreen 1664×928"),
    SizeOption("928*1664", 928, 1664, "9:16", "9:16 portrait/phone 928×1664"),
    SizeOption("1472*1140", 1472, 1140, "4:3", "4:3 landscape 1472×1140"),
    SizeOption("1140*1472", 1140, 1472, "3:4", "3:4 portrait 1140×1472"),
)
SIZE_VALUES: tuple[str, ...] = tuple(s.value for s in SIZES)
DEFAULT_SIZE = "1328*1328"
_SIZES_BY_VALUE = {s.value: s for s in SIZES}
# The API wants "W*H"; people type "WxH" or "W×H", so those are normalised, nothing fancier.
_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[*xX×]\s*(\d{1,5})\s*$")


def size_label(value: str) -> str:
    """A human label for ``value``; the value itself for sizes an operator added."""
    option = _SIZES_BY_VALUE.get(value)
    return option.label if option else value


def parse_size(value: str) -> tuple[int, int]:
    """``"1328*1328"`` (or ``"1328x1328"``, ``"1328×1328"``) -> ``(1328, 1328)``."""
    match = _SIZE_RE.match(value) if isinstance(value, str) else None
    if not match or int(match[1]) <= 0 or int(match[2]) <= 0:
        raise InvalidInput(Text("input.size_form", value=value), field="size")
    return int(match[1]), int(match[2])


@functools.lru_cache(maxsize=256)  # pure, and asked on every request before the acknowledgement
def _canonical_size(value: str) -> str:
    width, height = parse_size(value)
    return f"{width}*{height}"


def validate_size(value: str, allowed_sizes: Iterable[str] = SIZE_VALUES) -> str:
    """Return ``value`` as the canonical ``"W*H"`` if allowed, else refuse listing the choices.

    The upstream refuses other sizes with a 400; refusing here costs nothing and can say what
    to pick instead.
    """
    allowed = [_canonical_size(s) for s in allowed_sizes]
    try:
        canonical = _canonical_size(value)
    except InvalidInput:
        canonical = None
    if canonical not in allowed:
        choices = items(s if size_label(s) == s else f"{s} ({size_label(s)})" for s in allowed)
        raise InvalidInput(Text("input.size_unknown", value=value, choices=choices), field="size")
    return canonical


# --- styles (the spec's scenarios) ---------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """A named scenario; ``size=None`` means "the size asked for, else the default"."""

    name: str
    label: str
    description: str
    size: str | None
    prompt_extend: bool
    watermark: bool
    negative_prompt: str


_STYLE_LIST = (
    Style("rapid", "Rapid creation", "Square; the service expands short prompts.",
          "1328*1328", True, True, ""),
    Style("precise", "Precise control", "Your prompt as written, at the size you choose.",
          None, False, False, ""),
    Style("text", "Text rendering", "Square, prompt kept as written, for legible text.",
          "1328*1328", False, True, "blurred text"),
    Style("photo", "High-quality photo", "Widescreen photo, prompt kept as written.",
          "1664*928", False, False, "blur, low quality, noise"),
    Style("poster", "Poster design", "Tall poster; the service expands the prompt.",
          "928*1664", True, False, "messy, low quality"),
    Style("text-poster", "Text poster", "Tall poster whose text must be rendered exactly.",
          "928*1664", False, False, "blurred text"),
    Style("couplet", "Couplet calligraphy", "3:4 Chinese couplet in calligraphy.",
          "1140*1472", False, True, "blurred text, typos"),
)  # fmt: skip
STYLES: Mapping[str, Style] = MappingProxyType({s.name: s for s in _STYLE_LIST})
DEFAULT_STYLE = "rapid"


def get_style(name: str) -> Style:
    """Look a style up by name (case and surrounding spaces ignored)."""
    style = STYLES.get(name.strip().lower()) if isinstance(name, str) else None
    if style is None:
        raise InvalidInput(Text("input.style_unknown", value=name, choices=items(STYLES)), field="style")
    return style


# --- negative prompts by subject -----------------------------------------------------------

NEGATIVE_SETS: Mapping[str, str] = MappingProxyType(
    {
        "portrait": "blur, low quality, distortion, deformation, extra limbs, wrong proportions, ugly",
        "photo": "blur, noise, overexposure, underexposure, low resolution, watermark",
        "product": "blur, heavy shadows, excessive reflection, color distortion, messy background",
        "text": "blurred text, typos, distorted font, unclear strokes",
        "general": "blur, noise, low resolution, pixelated",
    }
)

# --- validation ----------------------------------------------------------------------------

# Every field is named in a sentence by its catalogue key `field.<name>`; a required field has
# a hint for when it is empty (`hint.<name>`, else "write the <name>").
_EMPTY_HINTS = frozenset({"prompt", "title"})
# Bidi embeddings/overrides and isolates: invisible, and they can make text read differently
# from what is sent (the "Trojan Source" trick), so they are refused like control characters.
_BIDI = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))


def field_name(field: str) -> str:
    return Text(f"field.{field}") if has(f"field.{field}") else field.replace("_", " ")


def count_chars(text: str) -> int:
    """Characters as the provider counts a prompt: one per Unicode code point, so a Chinese
    character, a letter, a digit and a punctuation mark each count one (never bytes)."""
    return len(text)


def validate_text(value: str | None, *, field: str, max_chars: int, required: bool = True) -> str:
    """Strip ``value`` and refuse it if empty (when required), unsafe or too long.

    Control characters (category Cc: newline, tab, NUL, DEL...) and bidi controls are refused,
    not silently removed: the user should see exactly what is sent and paid for. Lone
    surrogates (Cs) are refused too, since they cannot be encoded for the request. Length is
    counted in characters, not bytes (a Chinese character counts as one).
    """
    text = (value or "").strip()
    name = field_name(field)
    if not text:
        if not required:
            return ""
        hint = Text(f"hint.{field}") if field in _EMPTY_HINTS else Text("hint.write", name=name)
        raise InvalidInput(Text("input.empty", name=name, hint=hint), field=field)
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Cs") or char in _BIDI:
            key = "input.bidi_char" if char in _BIDI else "input.control_char"
            raise InvalidInput(Text(key, name=name, code=f"{ord(char):04X}"), field=field)
    if count_chars(text) > max_chars:
        raise InvalidInput(
            Text("input.too_long", name=name, length=count_chars(text), limit=max_chars),
            field=field,
        )
    return text


# --- prompt builders -----------------------------------------------------------------------

FIELD_MAX_CHARS = 200
DEFAULT_COUPLET_BACKGROUND = "red Xuan paper"
DEFAULT_COUPLET_FONT = "regular script in gold"
DEFAULT_COUPLET_BACKGROUND_ZH = "红色宣纸"
DEFAULT_COUPLET_FONT_ZH = "金色楷书"
#: the languages a prompt is built in: the provider's showcase prompts are English and Chinese
PROMPT_LANGUAGES = ("en", "zh")
# Han ideographs (with the extensions and compatibility blocks): what makes text "Chinese" here
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")


def is_chinese(*texts: str | None) -> bool:
    """Whether the text is written in Chinese: it contains Han characters (mixed text counts)."""
    return any(_HAN.search(text) for text in texts if text)


def _field(value: str | None, field: str, *, required: bool) -> str:
    """Validate one builder field; a straight ' becomes ’ so the '...' quoting stays unambiguous."""
    text = validate_text(value, field=field, max_chars=FIELD_MAX_CHARS, required=required)
    return text.replace("'", "\u2019")


def _zh_field(value: str | None, field: str, *, required: bool) -> str:
    """The same for a Chinese prompt, which quotes with “…”: a straight or closing ” inside becomes ″."""
    text = validate_text(value, field=field, max_chars=FIELD_MAX_CHARS, required=required)
    return text.replace('"', "\u2033").replace("\u201d", "\u2033")


# The provider's advice for text in images, followed by both builders: quote the exact text, say
# where it goes and in what style, never translate the quoted text, and say what to show rather
# than what to avoid (no negations). English keeps the spec's example shape word for word.


def poster_prompt(
    title: str, subtitle: str | None = None, background: str | None = None, *, language: str | None = None
) -> str:
    """The spec's poster shape: explicit quoted text renders far better than "a poster".

    `language` ("en" or "zh") is the prompt's language; by default Chinese when the title or
    subtitle is, English otherwise. The quoted text is sent exactly as written in either.
    """
    if _language(language, title, subtitle) == "zh":
        prompt = f"一张海报，顶部标题“{_zh_field(title, 'title', required=True)}”"
        if sub := _zh_field(subtitle, "subtitle", required=False):
            prompt += f"，标题下方副标题“{sub}”"
        if bg := _zh_field(background, "background", required=False):
            prompt += f"，背景是{bg}"
        return prompt + "，文字清晰工整"
    prompt = f"A poster with the title '{_field(title, 'title', required=True)}'"
    if sub := _field(subtitle, "subtitle", required=False):
        prompt += f" and subtitle '{sub}'"
    if bg := _field(background, "background", required=False):
        prompt += f", background is {bg}"
    return prompt


def couplet_prompt(
    left: str,
    right: str,
    horizontal: str,
    background: str | None = None,
    font: str | None = None,
    *,
    language: str | None = None,
) -> str:
    """The spec's couplet shape; background and font default to the spec's example.

    In Chinese when the scrolls are written in Chinese (the provider's couplet showcase is a
    Chinese prompt), in English otherwise; the scrolls are quoted exactly, never translated.
    """
    if _language(language, left, right) == "zh":
        parts = (
            f"左侧竖联“{_zh_field(left, 'left', required=True)}”",
            f"右侧竖联“{_zh_field(right, 'right', required=True)}”",
            f"顶部横批“{_zh_field(horizontal, 'horizontal', required=True)}”",
            f"背景是{_zh_field(background, 'background', required=False) or DEFAULT_COUPLET_BACKGROUND_ZH}",
            f"字体是{_zh_field(font, 'font', required=False) or DEFAULT_COUPLET_FONT_ZH}",
        )
        return "一副中国春联，" + "，".join(parts)
    parts = (
        f"left scroll '{_field(left, 'left', required=True)}'",
        f"right scroll '{_field(right, 'right', required=True)}'",
        f"horizontal scroll '{_field(horizontal, 'horizontal', required=True)}'",
        f"background is {_field(background, 'background', required=False) or DEFAULT_COUPLET_BACKGROUND}",
        f"font is {_field(font, 'font', required=False) or DEFAULT_COUPLET_FONT}",
    )
    return "A Chinese couplet, " + ", ".join(parts)


def couplet_lengths(inputs: Mapping[str, object]) -> tuple[int, int] | None:
    """(left, right) in characters when a couplet's two scrolls differ in length, else None.

    A couplet's two lines match character for character; a mismatch is allowed (people write
    free verse too) but worth a warning. Counted as the provider counts (`count_chars`).
    """
    left, right = str(inputs.get("left") or "").strip(), str(inputs.get("right") or "").strip()
    if not left or not right or count_chars(left) == count_chars(right):
        return None
    return count_chars(left), count_chars(right)


def _language(language: str | None, *texts: str | None) -> str:
    if language is None or language == "auto":
        return "zh" if is_chinese(*texts) else "en"
    if language not in PROMPT_LANGUAGES:
        raise InvalidInput(Text("input.language_unknown", value=language, choices=items(PROMPT_LANGUAGES)))
    return language


# --- resolving a request -------------------------------------------------------------------


@dataclass(frozen=True)
class ImageParams:
    """Everything the upstream call needs, validated; ``style`` is informational only."""

    prompt: str
    size: str
    negative_prompt: str
    prompt_extend: bool
    watermark: bool
    style: str


def resolve_params(
    prompt: str,
    *,
    style: str | None = None,
    size: str | None = None,
    negative_prompt: str | None = None,
    prompt_extend: bool | None = None,
    watermark: bool | None = None,
    default_size: str = DEFAULT_SIZE,
    allowed_sizes: Iterable[str] = SIZE_VALUES,
    prompt_max_chars: int = 800,
    negative_max_chars: int = 500,
) -> ImageParams:
    """Merge explicit arguments over the style over the defaults, then validate everything.

    ``None`` means "not given"; an explicit ``negative_prompt=""`` clears the style's.
    """
    chosen = get_style(style if style is not None else DEFAULT_STYLE)
    negative = chosen.negative_prompt if negative_prompt is None else negative_prompt
    return ImageParams(
        prompt=validate_text(prompt, field="prompt", max_chars=prompt_max_chars),
        size=validate_size(size or chosen.size or default_size, allowed_sizes),
        negative_prompt=validate_text(negative, field="negative_prompt", max_chars=negative_max_chars, required=False),
        prompt_extend=chosen.prompt_extend if prompt_extend is None else bool(prompt_extend),
        watermark=chosen.watermark if watermark is None else bool(watermark),
        style=chosen.name,
    )


# --- cache key -----------------------------------------------------------------------------

CACHE_KEY_VERSION = 1  # bump to invalidate every cached image if the material ever changes


def cache_key_material(params: ImageParams, model: str) -> str:
    """The spec's ``${prompt}_${size}_${negative_prompt}_${prompt_extend}`` plus watermark and
    model, as a JSON list so no two different requests can join to the same string.

    The style is left out on purpose: two styles resolving to the same parameters are the
    same picture and should be paid for once.
    """
    parts = [CACHE_KEY_VERSION, params.prompt, params.size, params.negative_prompt,
             params.prompt_extend, params.watermark, model]  # fmt: skip
    return json.dumps(parts, ensure_ascii=False, separators=(",", ":"))


def cache_key(params: ImageParams, *, model: str) -> str:
    """sha256 hex of :func:`cache_key_material`: fixed length and safe as a filename."""
    return hashlib.sha256(cache_key_material(params, model).encode("utf-8")).hexdigest()
