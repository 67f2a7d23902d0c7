"""Turning what a user typed into a validated generation request (pure, before any money is spent).

Used by the slash commands and the CLI alike, so both refuse the same input with the same words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bot import presets
from bot.config import Settings
from bot.errors import InvalidInput
from bot.i18n import Text, items
from bot.presets import ImageParams
from bot.storage.jobs import Job
from bot.storage.user_settings import NO_DEFAULTS, UserDefaults

POSTER_DEFAULT_STYLE = "poster"  # 928*1664, as the spec's poster scenario
COUPLET_STYLE = "couplet"  # 1140*1472, as the spec's couplet scenario
POSTER_STYLES = ("poster", "text-poster", "precise")  # the scenarios a poster can be made in
#: what a Remix lets the user edit, by the kind of job (the rest of the parameters are kept)
REMIX_FIELDS = {
    "imagine": ("prompt", "negative_prompt"),
    "poster": ("title", "subtitle", "background"),
    "couplet": ("left", "right", "horizontal", "background", "font"),
}


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    command: str  # imagine | poster | couplet | reroll | remix | imagine_this | cli
    params: ImageParams
    model: str
    inputs: Mapping[str, Any] = field(default_factory=dict)  # the command's own fields, for details/reroll
    reroll_of: int | None = None
    private: bool = False  # an ephemeral result only the requester sees
    spoiler: bool = False  # posted as a spoiler (a server may also require it in a channel)
    #: where each resolved value came from: "option", "yours" (/settings), "style" or "server"
    sources: Mapping[str, str] = field(default_factory=dict)


#: the values a user's /settings can fill in, and where each one may otherwise come from
SOURCE_OPTION, SOURCE_YOURS, SOURCE_STYLE, SOURCE_SERVER = "option", "yours", "style", "server"


def _pick(explicit: Any, default: Any) -> tuple[Any, str | None]:
    """An explicit option wins over the user's default; (value, source) or (None, None) for neither."""
    if explicit is not None:
        return explicit, SOURCE_OPTION
    if default is not None:
        return default, SOURCE_YOURS
    return None, None


def _sources(params: ImageParams, picked: dict[str, str | None], style_size: bool) -> dict[str, str]:
    """Each value's source: the option or your default when one was picked, else the style's
    (size only if the style fixes one) or the server's default."""
    fallback = {
        "style": SOURCE_SERVER,
        "size": SOURCE_STYLE if style_size else SOURCE_SERVER,
        "prompt_extend": SOURCE_STYLE,
        "watermark": SOURCE_STYLE,
        "private": SOURCE_SERVER,
    }
    return {name: picked.get(name) or fallback[name] for name in fallback}


class RequestBuilder:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def imagine(
        self,
        prompt: str,
        *,
        size: str | None = None,
        style: str | None = None,
        negative_prompt: str | None = None,
        prompt_extend: bool | None = None,
        watermark: bool | None = None,
        command: str = "imagine",
        private: bool | None = None,
        spoiler: bool | None = None,
        defaults: UserDefaults = NO_DEFAULTS,
    ) -> GenerationRequest:
        """`defaults`: the user's /settings, below every explicit option and above the style's."""
        picked: dict[str, str | None] = {}
        style, picked["style"] = _pick(style, defaults.style)
        size, picked["size"] = _pick(size, defaults.size)
        prompt_extend, picked["prompt_extend"] = _pick(prompt_extend, defaults.prompt_extend)
        watermark, picked["watermark"] = _pick(watermark, defaults.watermark)
        private, picked["private"] = _pick(private, defaults.private)
        params = self._resolve(
            prompt,
            style=style,
            size=size,
            negative_prompt=negative_prompt,
            prompt_extend=prompt_extend,
            watermark=watermark,
        )
        return GenerationRequest(
            command=command,
            params=params,
            model=self._settings.image_model,
            private=bool(private),
            spoiler=bool(spoiler),
            sources=_sources(params, picked, presets.get_style(params.style).size is not None),
        )

    def poster(
        self,
        title: str,
        subtitle: str | None = None,
        background: str | None = None,
        *,
        size: str | None = None,
        style: str | None = None,
        watermark: bool | None = None,
        language: str | None = None,
        private: bool | None = None,
        spoiler: bool | None = None,
        defaults: UserDefaults = NO_DEFAULTS,
    ) -> GenerationRequest:
        """A poster; `language` ("en"/"zh", default: the title's) is the language of the prompt.

        Naming the language says the text is exact: the service's prompt rewriting (which may
        paraphrase or translate the quoted title) stays off then, whatever the style says.
        """
        if style is not None and presets.get_style(style).name not in POSTER_STYLES:
            raise InvalidInput(Text("input.style_unknown", value=style, choices=items(POSTER_STYLES)), field="style")
        # a default style that is not a poster style is left out: a poster keeps its own scenario
        poster_default = defaults.style if defaults.style and defaults.style.strip().lower() in POSTER_STYLES else None
        picked: dict[str, str | None] = {}
        style, picked["style"] = _pick(style, poster_default)
        size, picked["size"] = _pick(size, defaults.size)
        watermark, picked["watermark"] = _pick(watermark, defaults.watermark)
        private, picked["private"] = _pick(private, defaults.private)
        prompt = presets.poster_prompt(title, subtitle, background, language=language)
        exact = False if language is not None else None
        if exact is not None:
            picked["prompt_extend"] = SOURCE_OPTION  # naming the language turns rewriting off
        params = self._resolve(
            prompt, style=style or POSTER_DEFAULT_STYLE, size=size, watermark=watermark, prompt_extend=exact
        )
        inputs = _present(title=title, subtitle=subtitle, background=background, language=language)
        sources = _sources(params, picked, presets.get_style(params.style).size is not None)
        if picked["style"] is None:
            sources["style"] = SOURCE_STYLE  # the poster's own scenario
        return GenerationRequest(
            command="poster",
            params=params,
            model=self._settings.image_model,
            inputs=inputs,
            private=bool(private),
            spoiler=bool(spoiler),
            sources=sources,
        )

    def couplet(
        self,
        left: str,
        right: str,
        horizontal: str,
        background: str | None = None,
        font: str | None = None,
        *,
        size: str | None = None,
        private: bool | None = None,
        spoiler: bool | None = None,
        defaults: UserDefaults = NO_DEFAULTS,
    ) -> GenerationRequest:
        """A couplet is always in the couplet scenario: of the user's defaults only size and private apply."""
        picked: dict[str, str | None] = {}
        size, picked["size"] = _pick(size, defaults.size)
        private, picked["private"] = _pick(private, defaults.private)
        prompt = presets.couplet_prompt(left, right, horizontal, background, font)
        params = self._resolve(prompt, style=COUPLET_STYLE, size=size)
        inputs = _present(left=left, right=right, horizontal=horizontal, background=background, font=font)
        sources = _sources(params, picked, style_size=True)
        sources["style"] = SOURCE_STYLE
        return GenerationRequest(
            command="couplet",
            params=params,
            model=self._settings.image_model,
            inputs=inputs,
            private=bool(private),
            spoiler=bool(spoiler),
            sources=sources,
        )

    def reroll(self, job: Job) -> GenerationRequest:
        """The same parameters again, as a new job (a new image, charged again); a private result's
        reroll stays private, a spoiler stays a spoiler."""
        return GenerationRequest(
            command="reroll",
            params=params_of(job),
            model=job.model,
            inputs=dict(job.inputs),
            reroll_of=job.id,
            private=job.private,
            spoiler=job.spoiler,
            sources=dict(job.sources),
        )

    def remix(self, job: Job, values: Mapping[str, str]) -> GenerationRequest:
        """A new job from a result's edited text (`values`, the fields of `remix_values`), with the
        job's other parameters (size, style, watermark, prompt extension, a poster's language);
        validated as the command's own input. A blank optional field is left out."""
        kind = remix_kind(job)
        given = {name: (values.get(name) or "").strip() for name in REMIX_FIELDS[kind]}
        if kind == "poster":
            request = self.poster(
                given["title"],
                given["subtitle"] or None,
                given["background"] or None,
                size=job.size,
                style=job.style,
                watermark=job.watermark,
                language=job.inputs.get("language"),
            )
        elif kind == "couplet":
            request = self.couplet(
                given["left"],
                given["right"],
                given["horizontal"],
                given["background"] or None,
                given["font"] or None,
                size=job.size,
            )
        else:  # the negative prompt as the box shows it: emptied, it clears the style's own
            request = self.imagine(
                given["prompt"],
                size=job.size,
                style=job.style,
                negative_prompt=given["negative_prompt"],
                prompt_extend=job.prompt_extend,
                watermark=job.watermark,
            )
        return replace(request, command="remix")

    def _resolve(self, prompt: str, **choices: Any) -> ImageParams:
        settings = self._settings
        # the spec's default size, unless the operator's IMAGE_SIZES left it out
        default_size = presets.DEFAULT_SIZE if presets.DEFAULT_SIZE in settings.image_sizes else settings.image_sizes[0]
        return presets.resolve_params(
            prompt,
            allowed_sizes=settings.image_sizes,
            default_size=default_size,
            prompt_max_chars=settings.prompt_max_chars,
            negative_max_chars=settings.negative_prompt_max_chars,
            **choices,
        )


def params_of(job: Job) -> ImageParams:
    """The parameters a stored job was generated with (for a reroll, or its cache key)."""
    return ImageParams(
        prompt=job.prompt,
        size=job.size,
        negative_prompt=job.negative_prompt,
        prompt_extend=job.prompt_extend,
        watermark=job.watermark,
        style=job.style or presets.DEFAULT_STYLE,
    )


def remix_kind(job: Job) -> str:
    """Which command's fields a job's Remix edits: a poster's or a couplet's inputs survive rerolls
    and remixes of it (they are copied), so they tell; anything else edits the prompt."""
    if "title" in job.inputs:
        return "poster"
    if "left" in job.inputs:
        return "couplet"
    return "imagine"


def remix_values(job: Job) -> dict[str, str]:
    """The Remix form's fields, pre-filled with what the job was made from."""
    kind = remix_kind(job)
    if kind == "imagine":
        return {"prompt": job.prompt, "negative_prompt": job.negative_prompt}
    return {name: str(job.inputs.get(name) or "") for name in REMIX_FIELDS[kind]}


def _present(**fields: str | None) -> dict[str, str]:
    return {name: value for name, value in fields.items() if value}
