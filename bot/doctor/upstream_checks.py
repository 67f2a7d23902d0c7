"""The doctor's free check of the image gateway: is it reachable, and does it accept the API key?

One request through the bot's own client (same URL, headers and body shape), with a size the spec
refuses: "Any other size is refused with code 400 ('Parameter Error: Unsupported image size')",
a parameter error, which is never charged (shared/spec/image-api.md). The gateway checks the key
before the parameters, so a bad key gets 401 and a good one the 400: the key is tested and no image
is made. A refused request starts no task at the provider, so it does not take a permit of the
shared upstream budget either; nothing of it is written to the ledger.
"""

from __future__ import annotations

import time

import httpx
from pydantic import SecretStr

from bot.config import Settings
from bot.doctor.report import Finding, Status, fail, ok, printable, skip, warn
from bot.imaging.client import ImageClient
from bot.imaging.errors import (
    AuthenticationFailed,
    BadRequest,
    ContentRejected,
    PermissionDenied,
    RateLimited,
    ServerError,
    Timeout,
    UpstreamError,
)
from bot.imaging.models import ImageRequest, ImageResponse
from bot.imaging.retry import RetryPolicy

REACHABLE, KEY = "image API reachable", "API key"
#: not one of the spec's five sizes: refused with 400 before anything is generated
PROBE_SIZE = "0*0"
PROBE_PROMPT = "imagine-bot doctor: a key check with an invalid size on purpose (refused before any charge)"
#: an unreachable gateway is reported within seconds, not after UPSTREAM_TIMEOUT_S
PROBE_CONNECT_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 15.0


async def probe_gateway(settings: Settings) -> list[Finding]:
    url = settings.nebula_base_url + "/images/generations"
    key = settings.nebula_api_key
    has_key = key is not None and bool(key.get_secret_value().strip())
    request = ImageRequest(model=settings.image_model, prompt=PROBE_PROMPT, size=PROBE_SIZE)
    started = time.monotonic()
    async with httpx.AsyncClient(follow_redirects=False, headers={"User-Agent": "imagine-bot doctor"}) as http:
        client = ImageClient(
            http,
            base_url=settings.nebula_base_url,
            # without a key the request still shows whether the gateway answers (it answers 401)
            api_key=key if has_key and key is not None else SecretStr("no-key-set"),
            timeout_s=PROBE_TIMEOUT_S,
            connect_timeout_s=PROBE_CONNECT_TIMEOUT_S,
            policy=RetryPolicy(max_retries=0),  # one request: a retry could only repeat the answer
            shape=settings.image_request_shape,
        )
        try:
            outcome: ImageResponse | UpstreamError = await client.generate(request)
        except UpstreamError as error:
            outcome = error
    elapsed = time.monotonic() - started

    reachable = _reachability(url, outcome, elapsed)
    if reachable.status is not Status.OK:
        return [reachable, skip(KEY, "the gateway did not answer")]
    if not has_key:
        return [
            reachable,
            fail(KEY, "NEBULA_API_KEY is not set.", "put your Nebula gateway API key in .env (see .env.example)."),
        ]
    assert key is not None
    return [reachable, _key_verdict(settings, outcome, _key_hint(key))]


def _reachability(url: str, outcome: ImageResponse | UpstreamError, elapsed: float) -> Finding:
    fix = "check NEBULA_BASE_URL, the network, and any proxy or firewall between here and the gateway."
    if isinstance(outcome, ServerError | Timeout) and outcome.status is None:  # no HTTP answer at all
        return fail(REACHABLE, f"no answer from {url}: {printable(outcome.message, 200)}.", fix)
    if isinstance(outcome, ServerError):
        return fail(REACHABLE, f"{url} answered HTTP {outcome.status}: {printable(outcome.message)}.", fix)
    if isinstance(outcome, BadRequest) and outcome.status == 404:
        return fail(
            REACHABLE,
            f"nothing answers image requests at {url} (HTTP 404).",
            "NEBULA_BASE_URL is the gateway's base, ending in /v1 (/images/generations is appended).",
        )
    status = outcome.status if isinstance(outcome, UpstreamError) else 200
    return ok(REACHABLE, f"{url} answered HTTP {status} in {elapsed:.1f} s")


def _key_verdict(settings: Settings, outcome: ImageResponse | UpstreamError, hint: str) -> Finding:
    if isinstance(outcome, ImageResponse):
        return warn(
            KEY,
            f"accepted ({hint}), but the gateway generated an image for the invalid size {PROBE_SIZE}"
            f" (request id {outcome.request_id or '-'}): it may have billed it.",
            "this gateway does not refuse invalid sizes as documented: run the doctor sparingly.",
        )
    if isinstance(outcome, AuthenticationFailed):
        return fail(
            KEY,
            f"refused by the gateway (401: {printable(outcome.message)}).",
            "NEBULA_API_KEY is invalid or expired: put a valid key in .env (the environment wins over .env).",
        )
    if isinstance(outcome, PermissionDenied):
        return fail(
            KEY,
            f"accepted, but refused for permission or balance (403: {printable(outcome.message)}).",
            f"top up the account, or give the key access to {settings.image_model}.",
        )
    if isinstance(outcome, RateLimited):
        return fail(
            KEY,
            "not verified: the gateway answered 429 (too many requests).",
            "run the doctor again in a minute (a busy bot may be using the whole budget).",
        )
    refused_for_the_size = not isinstance(outcome, ContentRejected) and "size" in outcome.message.lower()
    if isinstance(outcome, BadRequest) and refused_for_the_size:
        return ok(KEY, f"accepted ({hint}): the free probe (size {PROBE_SIZE}) got the documented 400, nothing charged")
    if isinstance(outcome, BadRequest):
        return fail(
            KEY,
            f"accepted ({hint}), but the gateway refused the request itself: {printable(outcome.message)}.",
            f"check IMAGE_MODEL ({settings.image_model}) and IMAGE_REQUEST_SHAPE ({settings.image_request_shape}).",
        )
    return fail(
        KEY,
        f"not verified: the gateway's answer is not the documented JSON ({printable(outcome.message)}).",
        "check that NEBULA_BASE_URL is the Nebula gateway's /v1 base.",
    )


def _key_hint(key: SecretStr) -> str:
    """At most the key's last four characters, and only of a key long enough for that to reveal nothing."""
    value = key.get_secret_value().strip()
    return f"key ending …{value[-4:]}" if len(value) >= 16 else "key"
