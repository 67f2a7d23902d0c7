"""The image client against the loopback fake: every row of the error table, and the retry rules."""

from __future__ import annotations

import base64
import gzip
import json
import random
import socket
from contextlib import asynccontextmanager

import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr

from bot.imaging.client import ImageClient, answer_limit, parse_response
from bot.imaging.errors import (
    AuthenticationFailed,
    BadRequest,
    ContentRejected,
    MalformedResponse,
    PermissionDenied,
    RateLimited,
    ServerError,
    Timeout,
)
from bot.imaging.models import ImageRequest
from bot.imaging.retry import RetryPolicy
from tests.conftest import TEST_API_KEY
from tests.fakes.image_api import FakeImageApi, Reply
from tests.fakes.loopback import LoopbackServer

REQUEST = ImageRequest(model="qwen-image-plus", prompt="A cute orange kitten", size="1328*1328")


class SleepRecorder:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class CountingGate:
    """Counts attempts, and how many requests were stamped as handed to the network."""

    def __init__(self) -> None:
        self.attempts = 0
        self.stamps = 0

    @asynccontextmanager
    async def attempt(self):
        self.attempts += 1
        yield self

    def sent(self) -> None:
        self.stamps += 1


@pytest.fixture
async def http():
    async with httpx.AsyncClient() as client:
        yield client


def make_client(http: httpx.AsyncClient, base_url: str, **kw) -> tuple[ImageClient, SleepRecorder]:
    sleep = SleepRecorder()
    options = {
        "base_url": base_url,
        "api_key": SecretStr(TEST_API_KEY),
        "policy": RetryPolicy(max_retries=2, retry_after_cap_s=30),
        "sleep": sleep,
        "rng": random.Random(7),
    }
    options.update(kw)
    return ImageClient(http, **options), sleep


async def test_success_parses_the_documented_shape(http, fake_api: FakeImageApi) -> None:
    client, _ = make_client(http, fake_api.base_url)
    fake_api.script(Reply.ok(revised_prompt="An orange kitten, soft light"))
    response = await client.generate(REQUEST)
    assert response.first.url.startswith(fake_api.url + "/files/")
    assert response.first.revised_prompt == "An orange kitten, soft light"
    assert (response.width, response.height, response.image_count) == (1328, 1328, 1)
    recorded = fake_api.requests[0]
    assert response.request_id == recorded.request_id


async def test_an_inline_image_answer_is_read_within_its_bound(http, fake_api: FakeImageApi) -> None:
    """A 2 MiB image inline in base64 (2.7 MB of JSON) fits the bound IMAGE_MAX_BYTES = 2 MiB gives."""
    client, _ = make_client(http, fake_api.base_url, max_answer_bytes=answer_limit(2 * 1024 * 1024))
    fake_api.script(Reply.ok(b64=True, image_bytes=2 * 1024 * 1024))
    response = await client.generate(REQUEST)
    assert len(base64.b64decode(response.first.b64_json)) == 2 * 1024 * 1024


async def test_an_answer_past_its_bound_is_refused_and_not_retried(http, fake_api: FakeImageApi) -> None:
    """A base64 answer longer than the bound is not read further (the request was sent: the image
    may be billed, so it is not asked for again)."""
    gate = CountingGate()
    client, sleep = make_client(http, fake_api.base_url, max_answer_bytes=1024 * 1024)
    fake_api.script(Reply.ok(b64=True, image_bytes=2 * 1024 * 1024))
    with pytest.raises(MalformedResponse, match="larger than 1,048,576 bytes") as caught:
        await client.generate(REQUEST, gate=gate)
    assert caught.value.request_id == fake_api.requests[0].request_id
    assert (gate.attempts, sleep.delays, len(fake_api.requests)) == (1, [], 1)


async def test_a_gzipped_answer_is_decoded_once(http) -> None:
    """The body is decoded while it is read; the answer parsed afterwards must not decode it again."""
    body = json.dumps({"code": 200, "msg": "ok", "data": {"data": [{"url": "https://x.aliyuncs.com/a.png"}]}})

    async def gzipped(request: web.Request) -> web.Response:
        headers = {"Content-Encoding": "gzip", "X-Request-Id": "req-gz"}
        return web.Response(body=gzip.compress(body.encode()), content_type="application/json", headers=headers)

    app = web.Application()
    app.router.add_post("/v1/images/generations", gzipped)
    with LoopbackServer(app) as server:
        client, _ = make_client(http, server.url + "/v1")
        response = await client.generate(REQUEST)
    assert (response.first.url, response.request_id) == ("https://x.aliyuncs.com/a.png", "req-gz")


async def test_sends_prompt_extend_and_watermark_explicitly(http, fake_api: FakeImageApi) -> None:
    client, _ = make_client(http, fake_api.base_url)
    await client.generate(
        ImageRequest("qwen-image-plus", "p", "1664*928", "blur", prompt_extend=False, watermark=False)
    )
    body = fake_api.requests[0].json
    assert body == {
        "model": "qwen-image-plus",
        "prompt": "p",
        "parameters": {
            "size": "1664*928",
            "negative_prompt": "blur",
            "prompt_extend": False,
            "watermark": False,
        },
    }
    assert fake_api.requests[0].headers["authorization"] == f"Bearer {TEST_API_KEY}"


async def test_messages_shape_is_selectable(http, fake_api: FakeImageApi) -> None:
    client, _ = make_client(http, fake_api.base_url, shape="messages")
    await client.generate(REQUEST)
    body = fake_api.requests[0].json
    assert body["extra"]["input"]["messages"] == [{"role": "user", "content": [{"text": REQUEST.prompt}]}]
    assert body["extra"]["parameters"]["prompt_extend"] is True
    assert "parameters" not in body


@pytest.mark.parametrize(
    ("reply", "error_type"),
    [
        (Reply.error(400, "Parameter Error: Unsupported image size"), BadRequest),
        (Reply.content_rejected(), ContentRejected),
        (Reply.error(401), AuthenticationFailed),
        (Reply.error(403), PermissionDenied),
        (Reply.body_error(400, "Parameter Error: model not found"), BadRequest),
        (Reply.body_error(403, "Insufficient balance"), PermissionDenied),
        (Reply.non_json(200), MalformedResponse),
        (Reply.no_image(), MalformedResponse),
    ],
)
async def test_refusals_are_typed_and_never_retried(http, fake_api: FakeImageApi, reply, error_type) -> None:
    client, sleep = make_client(http, fake_api.base_url)
    fake_api.script(reply)
    with pytest.raises(error_type) as caught:
        await client.generate(REQUEST)
    assert type(caught.value) is error_type
    assert len(fake_api.requests) == 1
    assert sleep.delays == []
    assert caught.value.request_id == fake_api.requests[0].request_id


async def test_bad_request_keeps_the_gateway_message(http, fake_api: FakeImageApi) -> None:
    client, _ = make_client(http, fake_api.base_url)
    fake_api.script(Reply.error(400, "Parameter Error: Unsupported image size"))
    with pytest.raises(BadRequest) as caught:
        await client.generate(REQUEST)
    assert caught.value.message == "Parameter Error: Unsupported image size"
    assert caught.value.code == 400


async def test_server_error_is_retried_then_succeeds(http, fake_api: FakeImageApi) -> None:
    client, sleep = make_client(http, fake_api.base_url)
    fake_api.script(Reply.error(500), Reply.error(502))
    response = await client.generate(REQUEST)
    assert response.first.url
    assert len(fake_api.requests) == 3
    assert len(sleep.delays) == 2
    assert sleep.delays[1] > sleep.delays[0] / 2  # backoff grows (with jitter)


@pytest.mark.parametrize("reply", [Reply.error(500), Reply.error(503), Reply.error(408), Reply.non_json(502)])
async def test_server_errors_fail_after_bounded_retries(http, fake_api: FakeImageApi, reply) -> None:
    client, sleep = make_client(http, fake_api.base_url)
    fake_api.script(reply, reply, reply, Reply.ok())
    with pytest.raises(ServerError):
        await client.generate(REQUEST)
    assert len(fake_api.requests) == 3  # the first try and max_retries=2
    assert len(sleep.delays) == 2


async def test_rate_limited_honours_retry_after_then_surfaces(http, fake_api: FakeImageApi) -> None:
    client, sleep = make_client(http, fake_api.base_url)
    fake_api.script(*[Reply.error(429, retry_after=7)] * 3)
    with pytest.raises(RateLimited) as caught:
        await client.generate(REQUEST)
    assert caught.value.retry_after == 7
    assert len(fake_api.requests) == 3
    assert all(delay >= 7 for delay in sleep.delays)


async def test_rate_limited_in_a_200_body(http, fake_api: FakeImageApi) -> None:
    client, _ = make_client(http, fake_api.base_url, policy=RetryPolicy(max_retries=0))
    fake_api.script(Reply.body_error(429, "Requests rate limit exceeded"))
    with pytest.raises(RateLimited):
        await client.generate(REQUEST)


async def test_retry_after_above_the_cap_goes_straight_to_the_scheduler(http, fake_api: FakeImageApi) -> None:
    client, sleep = make_client(http, fake_api.base_url)
    fake_api.script(Reply.error(429, retry_after=3600))
    with pytest.raises(RateLimited) as caught:
        await client.generate(REQUEST)
    assert caught.value.retry_after == 3600
    assert len(fake_api.requests) == 1
    assert sleep.delays == []


async def test_dropped_connection_after_sending_is_not_retried(http, fake_api: FakeImageApi) -> None:
    client, sleep = make_client(http, fake_api.base_url)
    fake_api.script(Reply.drop(), Reply.ok())
    with pytest.raises(ServerError) as caught:
        await client.generate(REQUEST)
    assert caught.value.retryable is False
    assert len(fake_api.requests) == 1
    assert sleep.delays == []


async def test_no_answer_is_a_timeout_and_not_retried(http, fake_api: FakeImageApi) -> None:
    client, sleep = make_client(http, fake_api.base_url, timeout_s=0.3)
    fake_api.script(Reply.hang(), Reply.ok())
    with pytest.raises(Timeout):
        await client.generate(REQUEST)
    assert len(fake_api.requests) == 1
    assert sleep.delays == []


async def test_connection_refused_is_retried_because_nothing_was_sent(http) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client, sleep = make_client(http, f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ServerError) as caught:
        await client.generate(REQUEST)
    assert caught.value.retryable is True
    assert len(sleep.delays) == 2
    # what the OS said, for an operator (imagine-bot doctor prints it); never the URL's secrets or headers
    assert caught.value.message == "could not reach the image API (ConnectError: All connection attempts failed)"


async def test_every_attempt_passes_the_gate(http, fake_api: FakeImageApi) -> None:
    client, _ = make_client(http, fake_api.base_url)
    gate = CountingGate()
    fake_api.script(Reply.error(500), Reply.error(429, retry_after=0))
    await client.generate(REQUEST, gate=gate)
    assert gate.attempts == 3
    assert gate.stamps >= 3  # each request was stamped as it left (once by the trace, then confirmed)


async def test_every_attempts_outcome_is_told_retried_ones_included(http, fake_api: FakeImageApi) -> None:
    """What /imagine-admin status counts: a 429 or a 5xx the client retried is still one the
    provider sent."""
    outcomes: list[str] = []
    client, _ = make_client(
        http, fake_api.base_url, on_attempt=lambda error: outcomes.append(type(error).__name__ if error else "ok")
    )
    fake_api.script(Reply.error(500), Reply.error(429, retry_after=0), Reply.ok(), Reply.content_rejected())
    await client.generate(REQUEST)
    with pytest.raises(ContentRejected):
        await client.generate(REQUEST)
    assert outcomes == ["ServerError", "RateLimited", "ok", "ContentRejected"]


async def test_a_request_is_stamped_as_it_leaves_and_never_when_it_could_not_be_sent(http) -> None:
    """The limiter counts starts when the request is handed to the network: a connection that
    never opened sent nothing, and counts for nothing."""
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client, _ = make_client(http, f"http://127.0.0.1:{port}/v1", policy=RetryPolicy(max_retries=0))
    gate = CountingGate()
    with pytest.raises(ServerError):
        await client.generate(REQUEST, gate=gate)
    assert (gate.attempts, gate.stamps) == (1, 0)


async def test_wrong_key_is_authentication_failed(http, fake_api: FakeImageApi) -> None:
    client, _ = make_client(http, fake_api.base_url, api_key=SecretStr("sk-wrong"))
    with pytest.raises(AuthenticationFailed):
        await client.generate(REQUEST)


# -- content-safety classification ---------------------------------------------------------------
# The provider's documented refusal codes and texts (see `SAFETY_CODES` / `SAFETY_TEXTS` in
# bot/imaging/client.py for the sources), and 400s that merely mention a safety-sounding word.
def _answer(http_status: int, code: object, msg: str) -> httpx.Response:
    return httpx.Response(http_status, json={"code": code, "msg": msg, "data": None})


@pytest.mark.parametrize(
    ("http_status", "code", "msg", "error_type"),
    [
        # refused by the provider's content inspection: by code ...
        (400, "DataInspectionFailed", "Input data may contain inappropriate content.", ContentRejected),
        (400, "data_inspection_failed", "Input or output data may contain inappropriate content.", ContentRejected),
        (
            400,
            "IPInfringementSuspect",
            "Input data is suspected of being involved in IP infringement.",
            ContentRejected,
        ),
        (400, "ip_infringement_suspect", "refused", ContentRejected),
        (400, "InternalError.Algo.DataInspectionFailed", "refused", ContentRejected),
        (200, "DataInspectionFailed", "Output data may contain inappropriate content.", ContentRejected),
        # ... by a code leading the message ...
        (400, 400, "DataInspectionFailed: Input data may contain inappropriate content.", ContentRejected),
        (
            400,
            400,
            "<400> InternalError.Algo.DataInspectionFailed: Input text data may contain inappropriate content.",
            ContentRejected,
        ),
        (400, 400, "data_inspection_failed", ContentRejected),
        # ... or by the documented text (the gateway keeps the message, drops the string code)
        (400, 400, "Input data may contain inappropriate content.", ContentRejected),
        (400, 400, "Output data may contain inappropriate content.", ContentRejected),
        (200, 400, "Output data may contain inappropriate content. (DataInspectionFailed)", ContentRejected),
        (400, 400, "Input data is suspected of being involved in IP infringement.", ContentRejected),
        (400, 400, "The image content does not comply with green network verification.", ContentRejected),
        # parameter errors that only mention a safety-sounding word stay BadRequest
        (400, 400, "Parameter Error: Unsupported image size", BadRequest),
        (400, 400, "model name is case-sensitive", BadRequest),
        (400, 400, "Parameter Error: the model name is case-sensitive, use qwen-image-plus", BadRequest),
        (400, 400, "the safety_level parameter is invalid", BadRequest),
        (400, "InvalidParameter", "parameters.safety_check must be a boolean", BadRequest),
        (400, 400, "Parameter Error: sensitive_words is not a known field", BadRequest),
        (400, 400, "content_policy: unknown parameter", BadRequest),
        (400, 400, "X-DashScope-DataInspection header is malformed", BadRequest),
        (400, 400, "Parameter Error: negative_prompt is too long (inappropriate length)", BadRequest),
        # a safety word on another status keeps that status's class
        (403, 403, "Insufficient balance for data inspection", PermissionDenied),
        (500, 500, "safety service unavailable", ServerError),
    ],
)
def test_content_refusal_is_classified_by_code_and_known_texts(http_status, code, msg, error_type) -> None:
    with pytest.raises(error_type) as caught:
        parse_response(_answer(http_status, code, msg))
    assert type(caught.value) is error_type
    assert caught.value.message in msg  # kept (cleaned of HTML-like tags such as "<400>")
