"""Wire models of the image API: what we send and what comes back.

Frozen dataclasses with explicit `to_dict` / `from_dict`, so the JSON on the wire is visible
in one place and tests can compare it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

RequestShape = Literal["parameters", "messages"]


@dataclass(frozen=True, slots=True)
class ImageRequest:
    model: str
    prompt: str
    size: str
    negative_prompt: str = ""
    prompt_extend: bool = True
    watermark: bool = True

    def to_dict(self, shape: RequestShape = "parameters") -> dict[str, Any]:
        # prompt_extend and watermark are always explicit: the provider's defaults (true)
        # must never decide silently for us.
        parameters = {
            "size": self.size,
            "negative_prompt": self.negative_prompt,
            "prompt_extend": self.prompt_extend,
            "watermark": self.watermark,
        }
        body: dict[str, Any] = {"model": self.model, "prompt": self.prompt}
        if shape == "messages":
            body["extra"] = {
                "input": {"messages": [{"role": "user", "content": [{"text": self.prompt}]}]},
                "parameters": parameters,
            }
        else:
            body["parameters"] = parameters
        return body


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """One entry of `data.data[]`: a URL (valid about 24 h) or inline base64."""

    url: str
    b64_json: str
    revised_prompt: str


@dataclass(frozen=True, slots=True)
class ImageResponse:
    images: tuple[GeneratedImage, ...]
    request_id: str | None
    created: int | None
    width: int | None
    height: int | None
    image_count: int | None

    @property
    def first(self) -> GeneratedImage:
        return self.images[0]

    @classmethod
    def from_dict(cls, body: dict[str, Any], *, header_request_id: str | None = None) -> ImageResponse:
        """Parse a success body; raises `ValueError` when it is not the documented shape."""
        data = body.get("data")
        if not isinstance(data, dict):
            raise ValueError("'data' is missing")
        raw_images = data.get("data")
        if not isinstance(raw_images, list) or not raw_images:
            raise ValueError("'data.data' holds no image")
        images = []
        for item in raw_images:
            if not isinstance(item, dict):
                raise ValueError("an entry of 'data.data' is not an object")
            images.append(
                GeneratedImage(
                    url=_text(item.get("url")),
                    b64_json=_text(item.get("b64_json")),
                    revised_prompt=_text(item.get("revised_prompt")),
                )
            )
        if not (images[0].url or images[0].b64_json):
            raise ValueError("the image has neither a url nor b64_json")
        metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        usage = metadata.get("usage") if isinstance(metadata.get("usage"), dict) else {}
        return cls(
            images=tuple(images),
            request_id=_text(metadata.get("request_id")) or header_request_id,
            created=_int(data.get("created")),
            width=_int(usage.get("width")),
            height=_int(usage.get("height")),
            image_count=_int(usage.get("image_count")),
        )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
