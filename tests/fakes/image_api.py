"""A loopback fake of the Nebula image API (qwen-image-plus), see shared/spec/image-api.md.

Tests and benchmarks point NEBULA_BASE_URL at ``FakeImageApi.base_url``. The fake validates
requests the way the provider documents, answers with the documented JSON shapes, serves
the generated images itself under ``/files/``, and can be scripted to misbehave (errors,
hostile downloads, dropped or hanging connections). It can also enforce rate and concurrency
limits, so a benchmark can prove the bot's own limiter never earns a 429.

``GET /_stats`` (for benchmarks that run the fake as a process of its own) answers with the
counters, the start time (on the fake's clock) of every generation it admitted, the time of
every 429 its limits sent, and every sized image it served (when it started and stopped sending,
how much it sent, whether the client read it all, and the SHA-256 of the whole file).
``GET /_requests`` lists every generation request: when it arrived and when it was answered (the
fake's clock), its status and its prompt (never its headers: they carry the API key). Like the
provider, the fake finishes (and counts) a generation whose client went away: a benchmark that
kills the bot sees what the provider would bill.

Image sizes: ``image_bytes`` (``--image-bytes``; per reply ``Reply.ok(image_bytes=...)``) serves
a real PNG padded to exactly that many bytes, each file distinct, declared by Content-Length or
(``chunked``, ``--chunked``) without one, and streamed only as fast as the client reads.

It runs on its own thread and loop (``LoopbackServer``); every public method and property is
safe to use from the test's thread.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import copy
import json
import math
import signal
import sys
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web

from tests.fakes.loopback import LoopbackServer
from tests.fakes.png import make_png, sized_png, sized_png_prefix, sized_png_tail

DEFAULT_SIZES = ("1328*1328", "1664*928", "928*1664", "1472*1140", "1140*1472")
OVERSIZED_BYTES = 64 * 1024 * 1024
_CHUNK = b"\x00" * (64 * 1024)
_JUNK = bytes(range(256)) * 256
_SEND_PIECE = 256 * 1024  # a sized image goes out in pieces this big
# A tiny JPEG-looking body: SOI, a JFIF APP0 segment, EOI. Enough for magic-byte sniffing.
TINY_JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffd9")
IMAGE_KINDS = frozenset(
    {"ok", "missing", "oversized", "oversized_chunked", "wrong_type", "bad_magic", "jpeg", "redirect"}
)
CONTENT_REJECTED_MSG = "Output data may contain inappropriate content. (DataInspectionFailed)"
_DEFAULT_MSGS = {
    400: "Parameter Error",
    401: "Invalid API key",
    403: "Insufficient permissions or balance",
    429: "Requests rate limit exceeded",
    500: "Internal Server Error",
}


@dataclass(frozen=True)
class Reply:
    """One scripted answer to a generation request; build it with the factory methods."""

    kind: str  # ok | no_image | error | body_error | non_json | drop | hang
    delay: float | None = None  # None: the fake's latency_s for ok/no_image, 0 otherwise
    status: int = 200
    code: int | None = None
    msg: str | None = None
    retry_after: float | str | None = None
    b64: bool = False
    revised_prompt: str = ""
    image: str = "ok"
    url: str | None = None
    redirect_to: str | None = None
    text: str = ""
    content_type: str = "application/json"
    image_bytes: int | None = None  # an "ok" image padded to this size (None: the fake's default)
    chunked: bool = False  # a sized image sent without Content-Length

    def __post_init__(self) -> None:
        if self.image not in IMAGE_KINDS:  # catch typos in tests early
            raise ValueError(f"unknown image kind {self.image!r}")

    @classmethod
    def ok(
        cls,
        delay: float | None = None,
        b64: bool = False,
        revised_prompt: str = "",
        image: str = "ok",
        url: str | None = None,
        redirect_to: str | None = None,
        image_bytes: int | None = None,
        chunked: bool = False,
    ) -> Reply:
        """Success; ``image`` picks how the served URL behaves, ``url`` replaces it verbatim;
        ``image_bytes`` pads the PNG (served or inline) to that size, ``chunked`` drops its length."""
        return cls(
            "ok",
            delay,
            b64=b64,
            revised_prompt=revised_prompt,
            image=image,
            url=url,
            redirect_to=redirect_to,
            image_bytes=image_bytes,
            chunked=chunked,
        )

    @classmethod
    def no_image(cls, delay: float | None = None) -> Reply:
        """HTTP 200, code 200, but an empty ``data.data`` list."""
        return cls("no_image", delay)

    @classmethod
    def error(
        cls,
        status: int,
        msg: str | None = None,
        code: int | None = None,
        retry_after: float | str | None = None,
        delay: float | None = None,
    ) -> Reply:
        """HTTP ``status`` with the provider's JSON error body."""
        return cls("error", delay, status=status, code=code, msg=msg, retry_after=retry_after)

    @classmethod
    def body_error(cls, code: int, msg: str) -> Reply:
        """HTTP 200 whose JSON body still reports an error code."""
        return cls("body_error", code=code, msg=msg)

    @classmethod
    def non_json(
        cls, status: int = 200, text: str = "<html>Bad gateway</html>", content_type: str = "text/html"
    ) -> Reply:
        """A body that is not JSON at all (a proxy's error page, say)."""
        return cls("non_json", status=status, text=text, content_type=content_type)

    @classmethod
    def content_rejected(cls) -> Reply:
        """The provider's safety refusal: a 400 naming DataInspectionFailed."""
        return cls("error", status=400, msg=CONTENT_REJECTED_MSG)

    @classmethod
    def drop(cls) -> Reply:
        """Close the connection without answering."""
        return cls("drop")

    @classmethod
    def hang(cls) -> Reply:
        """Never answer (until the fake stops); for client timeout tests."""
        return cls("hang")


@dataclass
class RecordedRequest:
    """A generation request as received; ``status`` is None until (unless) it is answered."""

    method: str
    path: str
    headers: dict[str, str]  # keys lower-cased
    json: Any
    received_at: float
    request_id: str
    status: int | None = None
    answered_at: float | None = None  # when the handler finished with an answer (None: dropped or hanging)


@dataclass(frozen=True)
class _File:
    kind: str
    width: int
    height: int
    seed: int
    redirect_to: str | None = None
    size: int | None = None  # a sized PNG of exactly this many bytes
    chunked: bool = False


@dataclass
class Transfer:
    """One sized image as served: on the fake's clock, how much went out, and its SHA-256."""

    name: str
    size: int
    sha256: str
    started_at: float  # the response's headers are out: sending begins
    ended_at: float | None = None  # the last byte went out, or the client hung up
    sent: int = 0  # bytes handed to the socket (the kernel may not have delivered them all)
    complete: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Invalid(Exception):
    """``(status, msg)`` of a request refused before the script is consumed (auth, body, validation)."""


@dataclass
class _State:
    """Everything the handlers mutate; guarded by FakeImageApi._lock."""

    script: collections.deque[Reply] = field(default_factory=collections.deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    starts: collections.deque[float] = field(default_factory=collections.deque)
    admitted: list[float] = field(default_factory=list)  # every admitted start, never pruned
    refused: list[float] = field(default_factory=list)  # when each rate/concurrency 429 was sent
    transfers: list[Transfer] = field(default_factory=list)  # sized images served
    generation_count: int = 0
    rate_limited_count: int = 0
    in_flight: int = 0
    max_in_flight: int = 0


def _envelope(code: int, msg: str, data: Any = None) -> dict[str, Any]:
    return {"code": code, "msg": msg, "data": data}


class FakeImageApi:
    """The fake server; see the module docstring."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        model: str = "qwen-image-plus",
        sizes: tuple[str, ...] = DEFAULT_SIZES,
        latency_s: float = 0.0,
        rpm_limit: int | None = None,
        concurrency_limit: int | None = None,
        image_bytes: int | None = None,
        chunked: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.image_bytes = image_bytes  # the size of every "ok" image a reply does not size itself
        self.chunked = chunked  # sized images go out without Content-Length, whatever the reply says
        self.model = model
        self.sizes = tuple(sizes)
        self.latency_s = latency_s
        self.rpm_limit = rpm_limit
        self.concurrency_limit = concurrency_limit
        self._clock = time.monotonic  # tests may freeze it to check the rate windows exactly
        self._lock = threading.Lock()
        self._state = _State()
        self._files: dict[str, _File] = {}
        self._tasks: set[asyncio.Task[Any]] = set()  # touched on the server loop only
        app = web.Application()
        app.router.add_post("/v1/images/generations", self._handle_generation)
        app.router.add_get("/files/{name}", self._handle_file)
        app.router.add_get("/_stats", self._handle_stats)
        app.router.add_get("/_requests", self._handle_requests)
        self._server = LoopbackServer(app, host=host, port=port)
        self._running = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> str:
        url = self._server.start()
        self._running = True
        return url

    def stop(self) -> None:
        """Cancel hanging/streaming handlers first: aiohttp would otherwise wait 60 s for them."""
        if self._running:
            self._server.call(self._cancel_handlers)
            self._server.stop()
            self._running = False

    def __enter__(self) -> FakeImageApi:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    # -- scripting and inspection (thread-safe) -------------------------------------------------
    def script(self, *replies: Reply) -> None:
        """Queue replies, consumed one per valid generation request; then default success."""
        with self._lock:
            self._state.script.extend(replies)

    def reset(self) -> None:
        """Forget the script, the records, the counters and the rate log (issued URLs stay valid)."""
        with self._lock:
            in_flight = self._state.in_flight
            self._state = _State(in_flight=in_flight, max_in_flight=in_flight)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return copy.deepcopy(self._state.requests)

    @property
    def generation_count(self) -> int:
        """Successful generations answered: what the provider would bill."""
        with self._lock:
            return self._state.generation_count

    @property
    def rate_limited_count(self) -> int:
        """429s served by the rpm/concurrency enforcement (scripted 429s are not counted)."""
        with self._lock:
            return self._state.rate_limited_count

    @property
    def downloads(self) -> list[str]:
        with self._lock:
            return list(self._state.downloads)

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._state.max_in_flight

    @property
    def pending_replies(self) -> int:
        with self._lock:
            return len(self._state.script)

    @property
    def transfers(self) -> list[Transfer]:
        """The sized images served so far, in the order they started."""
        with self._lock:
            return copy.deepcopy(self._state.transfers)

    def served_image(self, url: str) -> bytes:
        """The exact bytes the fake serves at a sized image's URL (for byte-for-byte checks)."""
        name = url.rsplit("/", 1)[-1]
        with self._lock:
            spec = self._files[name]
        assert spec.size is not None, "not a sized image"
        return sized_png(spec.width, spec.height, spec.seed, spec.size, name.encode())

    @property
    def admitted_starts(self) -> list[float]:
        """When each admitted generation started (the fake's clock, seconds), oldest first."""
        with self._lock:
            return list(self._state.admitted)

    def stats(self) -> dict[str, Any]:
        """The counters and the admitted start times, as ``GET /_stats`` answers them."""
        with self._lock:
            state = self._state
            return {
                "now": self._clock(),
                "requests": len(state.requests),
                "generation_count": state.generation_count,
                "rate_limited_count": state.rate_limited_count,
                "in_flight": state.in_flight,
                "max_in_flight": state.max_in_flight,
                "starts": list(state.admitted),
                "rate_limited_at": list(state.refused),
                "transfers": [t.as_dict() for t in state.transfers],
            }

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    def request_log(self) -> list[dict[str, Any]]:
        """Every generation request, oldest first, as ``GET /_requests`` answers it (no headers)."""
        with self._lock:
            return [
                {
                    "received_at": r.received_at,
                    "answered_at": r.answered_at,
                    "status": r.status,
                    "prompt": _prompt_of(r.json),
                    "request_id": r.request_id,
                }
                for r in self._state.requests
            ]

    async def _handle_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.request_log())

    # -- generation endpoint ---------------------------------------------------------------------
    async def _handle_generation(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        headers = {k.lower(): v for k, v in request.headers.items()}
        received_at = self._clock()
        # the body is read before the record is visible: a test that sees a request sees its JSON too
        raw = await request.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        record = RecordedRequest(request.method, request.path, headers, parsed, received_at, request_id)
        with self._lock:
            self._state.requests.append(record)
            self._state.in_flight += 1
            self._state.max_in_flight = max(self._state.max_in_flight, self._state.in_flight)
        self._tasks.add(task := asyncio.current_task())  # type: ignore[arg-type]
        try:
            response = await self._generate(request, record)
            with self._lock:
                record.status = response.status if response is not None else None
                record.answered_at = self._clock() if response is not None else None
            if response is None:  # dropped: aiohttp wants a response but cannot write it any more
                return web.Response(status=599)
            response.headers["X-Request-Id"] = request_id
            return response
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            with self._lock:
                self._state.in_flight -= 1

    async def _generate(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse | None:
        """Validate, apply the limits, then play the next scripted reply (or default success)."""
        try:
            body = await self._read_body(request, record)
            prompt, width, height = self._validate(body)
        except _Invalid as exc:
            status, msg = exc.args
            return web.json_response(_envelope(status, msg), status=status)
        with self._lock:
            admitted = self._admit()
            if not admitted:
                self._state.rate_limited_count += 1
                self._state.refused.append(self._clock())
            reply = self._state.script.popleft() if admitted and self._state.script else Reply.ok()
        if not admitted:
            return web.json_response(_envelope(429, _DEFAULT_MSGS[429]), status=429, headers={"Retry-After": "1"})
        return await self._play(request, reply, record.request_id, prompt, width, height)

    async def _read_body(self, request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise _Invalid(401, "Invalid API key")
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise _Invalid(400, "Parameter Error: request body must be JSON") from None
        with self._lock:
            record.json = body
        if not isinstance(body, dict):
            raise _Invalid(400, "Parameter Error: request body must be a JSON object")
        return body

    def _validate(self, body: dict[str, Any]) -> tuple[str, int, int]:
        """Check model, prompt and parameters in either request shape; return prompt and size."""
        if body.get("model") != self.model:
            raise _Invalid(400, "Parameter Error: model not found")
        extra = body.get("extra") if isinstance(body.get("extra"), dict) else {}
        prompt = body.get("prompt")
        if not (isinstance(prompt, str) and prompt.strip()):
            prompt = _prompt_from_messages(extra)
        if not (isinstance(prompt, str) and prompt.strip()):
            raise _Invalid(400, "Parameter Error: prompt is required")
        params = body.get("parameters", extra.get("parameters"))
        if not isinstance(params, dict):
            raise _Invalid(400, "Parameter Error: parameters are required")
        size = params.get("size")
        if size not in self.sizes:
            raise _Invalid(400, "Parameter Error: Unsupported image size")
        for flag in ("prompt_extend", "watermark"):
            if flag in params and not isinstance(params[flag], bool):
                raise _Invalid(400, f"Parameter Error: {flag} must be a boolean")
        if "negative_prompt" in params and not isinstance(params["negative_prompt"], str):
            raise _Invalid(400, "Parameter Error: negative_prompt must be a string")
        width, height = (int(part) for part in size.split("*"))
        return prompt, width, height

    def _admit(self) -> bool:
        """Apply concurrency and rpm limits (caller holds the lock); log the start if admitted.

        Like the vendor, a per-minute allowance is also enforced per second:
        at most ceil(rpm/60) starts in any 1 s window, and at most rpm in any 60 s.
        """
        state, now = self._state, self._clock()
        while state.starts and now - state.starts[0] >= 60.0:
            state.starts.popleft()
        if self.concurrency_limit is not None and state.in_flight > self.concurrency_limit:
            return False
        if self.rpm_limit is not None:
            last_second = 0
            for started in reversed(state.starts):
                if now - started >= 1.0:
                    break
                last_second += 1
            if len(state.starts) >= self.rpm_limit or last_second >= math.ceil(self.rpm_limit / 60):
                return False
        state.starts.append(now)
        state.admitted.append(now)
        return True

    async def _play(
        self, request: web.Request, reply: Reply, request_id: str, prompt: str, width: int, height: int
    ) -> web.StreamResponse | None:
        """Turn a Reply into the HTTP answer (or into a dropped or hanging connection)."""
        if reply.kind == "drop":
            if request.transport is not None:
                request.transport.close()
            return None
        if reply.kind == "hang":
            await asyncio.sleep(24 * 3600)  # cancelled by stop()
        default_delay = self.latency_s if reply.kind in ("ok", "no_image") else 0.0
        delay = reply.delay if reply.delay is not None else default_delay
        if delay > 0:
            await asyncio.sleep(delay)
        if reply.kind == "ok":
            return await self._success(reply, request_id, prompt, width, height)
        if reply.kind == "no_image":
            payload = self._payload([], request_id, 0, 0)
            return web.json_response(_envelope(200, "Operation successful", payload))
        if reply.kind == "non_json":
            return web.Response(status=reply.status, text=reply.text, content_type=reply.content_type)
        status = reply.status if reply.kind == "error" else 200
        code = reply.code if reply.code is not None else reply.status
        msg = reply.msg if reply.msg is not None else _default_msg(code)
        headers = {"Retry-After": _seconds_text(reply.retry_after)} if reply.retry_after is not None else None
        return web.json_response(_envelope(code, msg), status=status, headers=headers)

    async def _success(self, reply: Reply, request_id: str, prompt: str, width: int, height: int) -> web.Response:
        seed = zlib.crc32(prompt.encode()) & 0x3  # same prompt, same picture; few PNGs, so the cache holds them
        size = (reply.image_bytes or self.image_bytes) if reply.image == "ok" else None
        b64 = ""
        if reply.b64:
            if size is not None:
                png = await asyncio.to_thread(sized_png, width, height, seed, size, request_id.encode())
            else:
                png = await asyncio.to_thread(make_png, width, height, seed)
            b64, url = base64.b64encode(png).decode("ascii"), ""
        elif reply.url is not None:
            url = reply.url
        else:
            name = f"{uuid.uuid4()}.png"
            with self._lock:
                chunked = reply.chunked or self.chunked
                self._files[name] = _File(reply.image, width, height, seed, reply.redirect_to, size, chunked)
            url = f"{self.url}/files/{name}"
        item = {"url": url, "b64_json": b64, "revised_prompt": reply.revised_prompt}
        with self._lock:
            self._state.generation_count += 1
        payload = self._payload([item], request_id, width, height)
        return web.json_response(_envelope(200, "Operation successful", payload))

    @staticmethod
    def _payload(items: list[dict[str, str]], request_id: str, width: int, height: int) -> dict[str, Any]:
        """``data`` of the documented success answer (``metadata`` is the vendor's original)."""
        content = [{"image": item["url"]} for item in items]
        n = len(items)
        return {
            "data": items,
            "created": int(time.time()),
            "metadata": {
                "output": {
                    "choices": [{"finish_reason": "stop", "message": {"content": content, "role": "assistant"}}],
                    "task_metric": {"FAILED": 1 - min(n, 1), "SUCCEEDED": n, "TOTAL": 1},
                },
                "request_id": request_id,
                "usage": {"height": height, "image_count": n, "width": width},
            },
        }

    # -- image files ------------------------------------------------------------------------------
    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        """Serve a generated image, or misbehave the way its Reply asked."""
        name = request.match_info["name"]
        with self._lock:
            self._state.downloads.append(request.path)
            spec = self._files.get(name)
        if spec is None or spec.kind == "missing":
            return web.json_response(_envelope(404, "File not found"), status=404)
        if spec.kind == "ok" and spec.size is not None:
            return await self._stream_sized(request, name, spec)
        if spec.kind == "ok":
            png = await asyncio.to_thread(make_png, spec.width, spec.height, spec.seed)
            return web.Response(body=png, content_type="image/png")
        if spec.kind == "wrong_type":
            return web.Response(text="<html><body>Not an image</body></html>", content_type="text/html")
        if spec.kind == "bad_magic":
            return web.Response(body=b"GIF89a" + _JUNK[:512], content_type="image/png")
        if spec.kind == "jpeg":
            return web.Response(body=TINY_JPEG, content_type="image/jpeg")
        if spec.kind == "redirect":
            return self._redirect(spec)
        return await self._stream(request, chunked=spec.kind == "oversized_chunked")

    def _redirect(self, spec: _File) -> web.Response:
        """302 to ``redirect_to``, or by default to a fresh, good image on this fake."""
        target = spec.redirect_to
        if target is None:
            name = f"{uuid.uuid4()}.png"
            with self._lock:
                self._files[name] = _File("ok", spec.width, spec.height, spec.seed)
            target = f"{self.url}/files/{name}"
        return web.Response(status=302, headers={"Location": target})

    async def _stream(self, request: web.Request, *, chunked: bool) -> web.StreamResponse:
        """Stream 64 MiB lazily (only as fast as the client reads) to test download size caps."""
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        if chunked:
            response.enable_chunked_encoding()
            chunk = _JUNK
        else:
            response.content_length = OVERSIZED_BYTES
            chunk = _CHUNK
        self._tasks.add(task := asyncio.current_task())  # type: ignore[arg-type]
        try:
            await response.prepare(request)
            for _ in range(OVERSIZED_BYTES // len(chunk)):
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError:
            pass  # the client hung up, which is what a careful client does
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
        return response

    async def _stream_sized(self, request: web.Request, name: str, spec: _File) -> web.StreamResponse:
        """A sized PNG in pieces, only as fast as the client reads; the transfer is recorded."""
        assert spec.size is not None
        prefix, prefix_hash = await asyncio.to_thread(sized_png_prefix, spec.width, spec.height, spec.seed, spec.size)
        tail = sized_png_tail(name.encode())
        whole = prefix_hash.copy()
        whole.update(tail)
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        if spec.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = spec.size
        self._tasks.add(task := asyncio.current_task())  # type: ignore[arg-type]
        transfer: Transfer | None = None
        try:
            await response.prepare(request)
            transfer = Transfer(name, spec.size, whole.hexdigest(), started_at=self._clock())
            with self._lock:
                self._state.transfers.append(transfer)
            view = memoryview(prefix)
            for start in range(0, len(view), _SEND_PIECE):
                piece = view[start : start + _SEND_PIECE]
                await response.write(piece)
                transfer.sent += len(piece)
            await response.write(tail)
            transfer.sent += len(tail)
            await response.write_eof()
            transfer.complete = True
        except ConnectionError:
            pass  # the client hung up (a size cap, say)
        finally:
            if transfer is not None:
                transfer.ended_at = self._clock()
            self._tasks.discard(task)  # type: ignore[arg-type]
        return response

    async def _cancel_handlers(self) -> None:
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)


def _prompt_from_messages(extra: dict[str, Any]) -> str | None:
    """The first user text of the messages shape (extra.input.messages[].content[].text)."""
    inp = extra.get("input")
    messages = inp.get("messages") if isinstance(inp, dict) else None
    for message in messages if isinstance(messages, list) else []:
        if not (isinstance(message, dict) and message.get("role") == "user"):
            continue
        for part in message.get("content") or []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                return part["text"]
    return None


def _prompt_of(body: Any) -> str | None:
    """The prompt of a recorded request body, in either request shape (None if it has none)."""
    if not isinstance(body, dict):
        return None
    prompt = body.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        return prompt
    extra = body.get("extra")
    return _prompt_from_messages(extra) if isinstance(extra, dict) else None


def _default_msg(code: int) -> str:
    try:
        return _DEFAULT_MSGS.get(code) or HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def _seconds_text(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def main(argv: list[str] | None = None) -> int:
    """Serve the fake until SIGTERM/SIGINT; print ``FAKE_IMAGE_API <base_url>`` once ready."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.image_api", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each generation answer")
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--rpm", type=int, default=None, help="enforce this many generations per minute")
    parser.add_argument("--concurrency", type=int, default=None, help="enforce this many in flight")
    parser.add_argument("--image-bytes", type=int, default=None, help="pad every image to this many bytes")
    parser.add_argument("--chunked", action="store_true", help="send sized images without Content-Length")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    fake = FakeImageApi(
        api_key=args.api_key,
        latency_s=args.latency,
        rpm_limit=args.rpm,
        concurrency_limit=args.concurrency,
        image_bytes=args.image_bytes,
        chunked=args.chunked,
        host=args.host,
        port=args.port,
    )
    with fake:
        print(f"FAKE_IMAGE_API {fake.base_url}", flush=True)
        while not stop.wait(0.2):
            pass
        counts = f"generations={fake.generation_count} rate_limited={fake.rate_limited_count}"
        print(f"FAKE_IMAGE_API_STOPPED {counts}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
