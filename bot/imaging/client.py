"""The image API client: one request in, one parsed response or one typed error out.

Retries happen here and only here (policy in `retry.py`). Every attempt, retries included,
runs inside `gate.attempt()`, which is how the scheduler's global limiter sees every upstream
call and pauses everyone on a 429. Every attempt's outcome is told to `on_attempt` (the status
command's upstream health), retried 429s and errors included.

An answer is read up to a bound (`answer_limit`): an image inline in base64 makes it large, and
one that never ends must not take the bot's memory with it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import httpx
from pydantic import SecretStr

from bot.imaging.errors import (
    AuthenticationFailed,
    BadRequest,
    ContentRejected,
    MalformedResponse,
    PermissionDenied,
    RateLimited,
    ServerError,
    Timeout,
    UpstreamError,
)
from bot.imaging.models import ImageRequest, ImageResponse, RequestShape
from bot.imaging.retry import RetryPolicy, parse_retry_after, retry_delay, should_retry
from bot.metrics import Metrics

log = logging.getLogger("imagine.imaging")

# -- the provider's content-safety refusals: the one list -------------------------------------------
# qwen-image-plus runs on Alibaba Cloud Model Studio (DashScope); the gateway passes its refusals
# on as a 400 (sometimes with the vendor's string code in the body ``code``, sometimes only in the
# message). Sources:
#   - Model Studio "Status codes": 400 ``DataInspectionFailed`` / ``data_inspection_failed`` with
#     "Input or output data may contain inappropriate content." / "Input data may contain
#     inappropriate content." / "Output data may contain inappropriate content."
#     https://alibabacloud.com/help/en/model-studio/developer-reference/error-code
#   - Qwen Cloud "Safety", moderation error codes (400): ``data_inspection_failed``,
#     ``ip_infringement_suspect`` "Input data is suspected of being involved in IP infringement.",
#     ``custom_role_blocked`` "Input or output data may contain inappropriate content with custom
#     rule."; for image generation also "The image content does not comply with green network
#     verification."  https://docs.qwencloud.com/developer-guides/run-and-scale/safety
#   - as DashScope's native API words it (QwenLM/qwen-code#3145): "<400>
#     InternalError.Algo.DataInspectionFailed: Input text data may contain inappropriate content."
# Codes match as whole identifiers, any spelling (CamelCase, snake_case, a dotted segment); texts
# match as whole documented sentences. A word such as "sensitive" or "safety" alone means nothing:
# "model name is case-sensitive" or "the safety_level parameter is invalid" are parameter errors.
SAFETY_CODES = ("DataInspectionFailed", "IPInfringementSuspect", "CustomRoleBlocked")
SAFETY_TEXTS = (
    "Input or output data may contain inappropriate content",
    "Input data may contain inappropriate content",
    "Input text data may contain inappropriate content",
    "Output data may contain inappropriate content",
    "Input data is suspected of being involved in IP infringement",
    "The image content does not comply with green network verification",
)
# Headers that describe the body as sent on the wire; a body read (and decoded) here drops them.
_BODY_FRAMING = frozenset({"content-encoding", "content-length", "transfer-encoding"})
# Failures where the request never reached the server: retrying cannot cause a second charge.
_NEVER_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
)


def answer_limit(image_max_bytes: int) -> int:
    """The largest generation answer read: an inline image of IMAGE_MAX_BYTES is 4/3 as long in
    base64 (a JSON encoder may escape its '/' too: 1/64 of it), plus room for the rest of the JSON."""
    return image_max_bytes * 3 // 2 + 1024 * 1024


class SendStamp(Protocol):
    """Told the moment the request is handed to the network (the start the provider counts)."""

    def sent(self) -> None: ...


class Gate(Protocol):
    """Wraps one upstream attempt (the scheduler's limiter implements it)."""

    def attempt(self) -> AbstractAsyncContextManager[SendStamp]: ...


class _Unstamped:
    def sent(self) -> None:
        pass


class OpenGate:
    """No limits: for one-off calls outside a scheduler (and the client's own tests)."""

    @asynccontextmanager
    async def attempt(self):  # type: ignore[override]
        yield _Unstamped()


def _stamp_when_sent(stamp: SendStamp) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
    """An httpcore trace hook: stamps the start as the request's headers start to go out, after
    any wait for a pooled connection or a TCP/TLS connect, which the provider does not see."""

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event.endswith("send_request_headers.started"):
            stamp.sent()

    return trace


class ImageClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: SecretStr,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        policy: RetryPolicy | None = None,
        shape: RequestShape = "parameters",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        on_attempt: Callable[[UpstreamError | None], None] | None = None,
        metrics: Metrics | None = None,
        max_answer_bytes: int = answer_limit(10 * 1024 * 1024),
    ) -> None:
        """`on_attempt`: told how each attempt ended, None for an answer, else its error.
        `max_answer_bytes`: the longest answer read (see `answer_limit`)."""
        self._http = http
        self._metrics = metrics or Metrics()
        self._max_answer_bytes = max_answer_bytes
        self._url = base_url.rstrip("/") + "/images/generations"
        self._api_key = api_key
        self._timeout_s = timeout_s
        # httpx's read timeout is per silent chunk (default 5 s): a generation takes longer, so
        # the read timeout is the whole generation budget; connecting must be quick.
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s, write=30.0, pool=timeout_s)
        self._policy = policy or RetryPolicy()
        self._shape = shape
        self._sleep = sleep
        self._rng = rng
        self._on_attempt = on_attempt

    async def generate(self, request: ImageRequest, *, gate: Gate | None = None) -> ImageResponse:
        gate = gate or OpenGate()
        retries = 0
        while True:
            try:
                async with gate.attempt() as stamp:
                    with self._metrics.upstream_attempt():  # in flight, timed, 429s counted
                        response = await self._attempt(request, stamp)
            except UpstreamError as error:
                self._attempted(error)
                if not should_retry(error, retries, self._policy):
                    raise
                delay = retry_delay(error, retries, self._policy, self._rng)
                retries += 1
                log.warning(
                    "image API: %s; retry %d/%d in %.1f s (request_id=%s)",
                    type(error).__name__,
                    retries,
                    self._policy.max_retries,
                    delay,
                    error.request_id or "-",
                    extra={"request_id": error.request_id},
                )
                await self._sleep(delay)
            else:
                self._attempted(None)
                return response

    def _attempted(self, error: UpstreamError | None) -> None:
        if self._on_attempt is not None:
            self._on_attempt(error)

    async def _attempt(self, request: ImageRequest, stamp: SendStamp) -> ImageResponse:
        headers = {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}
        body = request.to_dict(self._shape)
        try:
            # An overall deadline on top of httpx's per-phase timeouts.
            async with asyncio.timeout(self._timeout_s + 5):
                async with self._http.stream(
                    "POST",
                    self._url,
                    json=body,
                    headers=headers,
                    timeout=self._timeout,
                    extensions={"trace": _stamp_when_sent(stamp)},
                ) as streamed:
                    stamp.sent()  # a no-op once traced; a late (so cautious) stamp for transports that do not trace
                    response = await _read_answer(streamed, self._max_answer_bytes)
        except _NEVER_SENT as exc:
            raise ServerError(f"could not reach the image API ({_network_error(exc)})") from None
        except (httpx.TimeoutException, TimeoutError):
            raise Timeout(f"the image API did not answer within {self._timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            # The request was sent and the connection broke: the image may be generating (and
            # billed), so this is not retried.
            raise ServerError(f"connection lost after sending ({type(exc).__name__})", retryable=False) from None
        return parse_response(response)


def _network_error(exc: Exception) -> str:
    """`ConnectError: All connection attempts failed`: the class and what the OS said (no URL, no header)."""
    detail = _clean(str(exc), limit=200)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


async def _read_answer(response: httpx.Response, limit: int) -> httpx.Response:
    """The streamed answer read whole, but never more than `limit` bytes (then MalformedResponse: the
    request was sent, so it is not retried); as a response whose body is already decoded."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise MalformedResponse(
                f"the image API's answer is larger than {limit:,} bytes", request_id=_header_request_id(response)
            )
        chunks.append(chunk)
    headers = [(key, value) for key, value in response.headers.multi_items() if key.lower() not in _BODY_FRAMING]
    return httpx.Response(response.status_code, headers=headers, content=b"".join(chunks), request=response.request)


def _header_request_id(response: httpx.Response) -> str | None:
    return response.headers.get("x-request-id") or response.headers.get("x-dashscope-request-id")


def parse_response(response: httpx.Response) -> ImageResponse:
    """Turn an HTTP answer into a response or the error of the table (HTTP status or body code)."""
    request_id = _header_request_id(response)
    body = _json_object(response)
    body_code = body.get("code") if body is not None else None
    if response.status_code != 200:
        status = response.status_code
    elif body is None:
        raise MalformedResponse("the image API answered 200 with a body that is not JSON", request_id=request_id)
    elif isinstance(body_code, int) and not isinstance(body_code, bool):
        status = body_code
    elif isinstance(body_code, str) and names_safety_code(body_code):
        status = 400  # a refusal in a 200 body, named by the vendor's string code
    else:
        status = 200
    if status != 200:
        raise error_for_status(
            status,
            _message(body, response),
            request_id=_body_request_id(body) or request_id,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            http_status=response.status_code,
            code=body_code,
        )
    try:
        return ImageResponse.from_dict(body, header_request_id=request_id)  # type: ignore[arg-type]
    except ValueError as exc:
        raise MalformedResponse(f"the image API's answer has no usable image: {exc}", request_id=request_id) from None


def error_for_status(
    status: int,
    message: str,
    *,
    request_id: str | None,
    retry_after: float | None = None,
    http_status: int | None = None,
    code: object = None,
) -> UpstreamError:
    kw: dict[str, Any] = {
        "status": http_status,
        "code": code if isinstance(code, int | str) else status,
        "request_id": request_id,
    }
    if is_content_refusal(status, code, message):
        return ContentRejected(message, **kw)
    if status == 401:
        return AuthenticationFailed(message, **kw)
    if status == 403:
        return PermissionDenied(message, **kw)
    if status == 429:
        return RateLimited(message, retry_after=retry_after, **kw)
    if status == 408 or status >= 500:
        return ServerError(message, **kw)
    if 400 <= status < 500:
        return BadRequest(message, **kw)
    return MalformedResponse(f"unexpected status {status}: {message}", **kw)


def is_content_refusal(status: int, code: object, message: str) -> bool:
    """The provider's safety system refused the request: by its code first, then by its known texts.

    A string body ``code`` naming a safety refusal is decisive whatever the status; otherwise only a
    400 can be one, when its message names a safety code or carries one of the documented texts.
    """
    if isinstance(code, str) and names_safety_code(code):
        return True
    if status != 400:
        return False
    folded = " ".join(message.split()).casefold()
    return names_safety_code(message) or any(text in folded for text in _SAFETY_TEXT_KEYS)


def names_safety_code(text: str) -> bool:
    """Whether ``text`` contains one of SAFETY_CODES as a whole identifier, in any spelling."""
    return any(_code_key(token) in _SAFETY_CODE_KEYS for token in _IDENTIFIER.findall(text))


def _code_key(code: str) -> str:
    return code.replace("_", "").casefold()  # DataInspectionFailed == data_inspection_failed


_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # "InternalError.Algo.DataInspectionFailed": 3 tokens
_SAFETY_CODE_KEYS = frozenset(_code_key(code) for code in SAFETY_CODES)
_SAFETY_TEXT_KEYS = tuple(text.casefold() for text in SAFETY_TEXTS)


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _message(body: dict[str, Any] | None, response: httpx.Response) -> str:
    if body is not None:
        for key in ("msg", "message", "error"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if isinstance(value, str) and value.strip():
                return _clean(value)
    text = _clean(response.text) if response.text else ""
    return text or f"HTTP {response.status_code}"


def _clean(text: str, limit: int = 300) -> str:
    """One line, printable, bounded: upstream text ends up in logs and user messages."""
    text = re.sub(r"<[^>]{0,200}>", " ", text)  # drop HTML tags of proxy error pages
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "")


def _body_request_id(body: dict[str, Any] | None) -> str | None:
    if body is None:
        return None
    value = body.get("request_id")
    if isinstance(value, str) and value:
        return value
    data = body.get("data")
    if isinstance(data, dict) and isinstance(data.get("metadata"), dict):
        value = data["metadata"].get("request_id")
        return value if isinstance(value, str) and value else None
    return None
