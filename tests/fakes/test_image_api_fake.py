"""The image API fake behaves like the documented provider, and misbehaves on request."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import select
import struct
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import httpx
import pytest

from tests.fakes.image_api import OVERSIZED_BYTES, FakeImageApi, Reply
from tests.fakes.png import PNG_SIGNATURE, make_png, png_size

AUTH = {"Authorization": "Bearer test-key"}
GEN = "/images/generations"
REPO_ROOT = Path(__file__).resolve().parents[2]


def simple_body(prompt: str = "A cute orange kitten", size: str = "1328*1328", **params: object) -> dict:
    return {"model": "qwen-image-plus", "prompt": prompt, "parameters": {"size": size, **params}}


def messages_body(prompt: str = "A poster", size: str = "928*1664", with_top_prompt: bool = True) -> dict:
    body: dict = {
        "model": "qwen-image-plus",
        "extra": {
            "input": {"messages": [{"role": "user", "content": [{"text": prompt}]}]},
            "parameters": {"size": size, "prompt_extend": False, "watermark": False, "negative_prompt": ""},
        },
    }
    if with_top_prompt:
        body["prompt"] = prompt
    return body


@pytest.fixture
def fake():
    with FakeImageApi() as server:
        yield server


@pytest.fixture
def client(fake):
    with httpx.Client(base_url=fake.base_url, headers=AUTH, timeout=10) as c:
        yield c


def image_url(client: httpx.Client, reply: Reply, fake: FakeImageApi) -> str:
    fake.script(reply)
    response = client.post(GEN, json=simple_body())
    assert response.status_code == 200
    return response.json()["data"]["data"][0]["url"]


# -- PNG encoder ---------------------------------------------------------------------------------
def test_make_png_is_a_valid_png_of_the_asked_size():
    data = make_png(1664, 928, seed=3)
    assert data.startswith(PNG_SIGNATURE)
    assert png_size(data) == (1664, 928)
    pos, idat = 8, b""
    while pos < len(data):  # every chunk's CRC is right; collect the image data
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload) & 0xFFFFFFFF
        idat += payload if kind == b"IDAT" else b""
        pos += 12 + length
    assert kind == b"IEND"
    assert len(zlib.decompress(idat)) == 928 * (1 + 3 * 1664)


def test_make_png_differs_by_seed_and_png_size_refuses_other_bytes():
    assert make_png(8, 8, seed=1) != make_png(8, 8, seed=2)
    with pytest.raises(ValueError):
        png_size(b"GIF89a" + b"\x00" * 40)


# -- success, both request shapes --------------------------------------------------------------------
def test_default_success_matches_the_documented_shape(fake, client):
    response = client.post(GEN, json=simple_body(prompt_extend=True, watermark=True, negative_prompt=""))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == 200 and body["msg"] == "Operation successful"
    data = body["data"]
    assert set(data) == {"data", "created", "metadata"}
    [item] = data["data"]
    assert set(item) == {"url", "b64_json", "revised_prompt"}
    assert item["b64_json"] == "" and item["revised_prompt"] == ""
    assert item["url"].startswith(fake.url + "/files/") and item["url"].endswith(".png")
    meta = data["metadata"]
    assert meta["usage"] == {"height": 1328, "image_count": 1, "width": 1328}
    assert meta["output"]["task_metric"] == {"FAILED": 0, "SUCCEEDED": 1, "TOTAL": 1}
    assert meta["output"]["choices"][0]["message"]["content"] == [{"image": item["url"]}]
    request_id = response.headers["x-request-id"]
    assert str(uuid.UUID(request_id)) == request_id == meta["request_id"]

    image = client.get(item["url"])
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert int(image.headers["content-length"]) == len(image.content)
    assert png_size(image.content) == (1328, 1328)

    assert fake.generation_count == 1
    assert fake.downloads == [httpx.URL(item["url"]).path]
    [recorded] = fake.requests
    assert (recorded.method, recorded.path, recorded.status) == ("POST", "/v1/images/generations", 200)
    assert recorded.json == simple_body(prompt_extend=True, watermark=True, negative_prompt="")
    assert recorded.headers["authorization"] == "Bearer test-key"
    assert recorded.request_id == request_id


@pytest.mark.parametrize("with_top_prompt", [True, False])
def test_messages_shape_is_accepted(fake, client, with_top_prompt):
    response = client.post(GEN, json=messages_body(with_top_prompt=with_top_prompt))
    assert response.status_code == 200
    body = response.json()
    assert body["data"]["metadata"]["usage"] == {"height": 1664, "image_count": 1, "width": 928}
    assert png_size(client.get(body["data"]["data"][0]["url"]).content) == (928, 1664)


# -- validation (answered before the script is consumed) ----------------------------------------------
@pytest.mark.parametrize(
    ("headers", "payload", "status", "msg"),
    [
        ({"Authorization": "Bearer wrong"}, simple_body(), 401, "Invalid API key"),
        ({"Authorization": ""}, simple_body(), 401, "Invalid API key"),
        (AUTH, b"not json", 400, None),
        (AUTH, {**simple_body(), "model": "qwen-image"}, 400, "Parameter Error: model not found"),
        (AUTH, simple_body(prompt=""), 400, "Parameter Error: prompt is required"),
        (AUTH, messages_body(prompt="", with_top_prompt=False), 400, "Parameter Error: prompt is required"),
        (AUTH, simple_body(size="1024*1024"), 400, "Parameter Error: Unsupported image size"),
        (AUTH, simple_body(size="1328x1328"), 400, "Parameter Error: Unsupported image size"),
        (AUTH, messages_body(size="512*512"), 400, "Parameter Error: Unsupported image size"),
        (AUTH, simple_body(prompt_extend="yes"), 400, None),
        (AUTH, simple_body(watermark=1), 400, None),
    ],
)
def test_invalid_requests_are_refused_without_consuming_the_script(fake, headers, payload, status, msg):
    fake.script(Reply.error(500))
    with httpx.Client(base_url=fake.base_url, headers=headers, timeout=10) as c:
        if isinstance(payload, bytes):
            response = c.post(GEN, content=payload, headers={"Content-Type": "application/json"})
        else:
            response = c.post(GEN, json=payload)
    assert response.status_code == status
    body = response.json()
    assert body["code"] == status and body["data"] is None
    if msg is not None:
        assert body["msg"] == msg
    uuid.UUID(response.headers["x-request-id"])
    assert fake.pending_replies == 1 and fake.generation_count == 0
    assert fake.requests[0].status == status


def test_an_invalid_size_probe_is_refused_before_any_charge_or_start(fake):
    """`imagine-bot doctor` checks the key with a size the spec refuses: the key is checked first (a
    bad one gets 401 whatever the body), a good one gets the documented 400 for the size, and
    neither is a generation (billed) nor a start counted against the rate limits."""
    fake.rpm_limit = 1
    fake.script(Reply.error(500))
    with httpx.Client(base_url=fake.base_url, timeout=10) as c:
        bad = c.post(GEN, json=simple_body(size="0*0"), headers={"Authorization": "Bearer wrong"})
        good = c.post(GEN, json=simple_body(size="0*0"), headers=AUTH)
    assert (bad.status_code, bad.json()["msg"]) == (401, "Invalid API key")
    assert (good.status_code, good.json()["msg"]) == (400, "Parameter Error: Unsupported image size")
    assert fake.generation_count == 0 and fake.pending_replies == 1 and fake.admitted_starts == []
    with httpx.Client(base_url=fake.base_url, headers=AUTH, timeout=10) as c:
        assert c.post(GEN, json=simple_body()).status_code == 500  # the one start of the minute is still free


# -- scripted replies --------------------------------------------------------------------------------
def test_script_is_fifo_then_default_success(fake, client):
    fake.script(Reply.error(500), Reply.ok(revised_prompt="A fluffy orange kitten, photo"))
    first, second, third = (client.post(GEN, json=simple_body()) for _ in range(3))
    assert first.status_code == 500
    assert first.json() == {"code": 500, "msg": "Internal Server Error", "data": None}
    assert second.json()["data"]["data"][0]["revised_prompt"] == "A fluffy orange kitten, photo"
    assert third.status_code == 200
    assert [r.status for r in fake.requests] == [500, 200, 200]
    assert fake.generation_count == 2


def test_b64_reply_carries_the_png_inline(fake, client):
    fake.script(Reply.ok(b64=True))
    item = client.post(GEN, json=simple_body(size="1472*1140")).json()["data"]["data"][0]
    assert item["url"] == ""
    assert png_size(base64.b64decode(item["b64_json"])) == (1472, 1140)


def test_url_override_is_verbatim(fake, client):
    assert image_url(client, Reply.ok(url="https://evil.example.com/x.png"), fake) == "https://evil.example.com/x.png"


@pytest.mark.parametrize(
    ("image", "status", "content_type", "starts_with"),
    [
        ("missing", 404, "application/json", b"{"),
        ("wrong_type", 200, "text/html", b"<html>"),
        ("bad_magic", 200, "image/png", b"GIF89a"),
        ("jpeg", 200, "image/jpeg", b"\xff\xd8\xff"),
    ],
)
def test_hostile_image_kinds(fake, client, image, status, content_type, starts_with):
    response = client.get(image_url(client, Reply.ok(image=image), fake))
    assert response.status_code == status
    assert response.headers["content-type"].split(";")[0] == content_type
    assert response.content.startswith(starts_with)
    assert not response.content.startswith(PNG_SIGNATURE)


def test_oversized_declares_64_mib_and_streams_lazily(fake, client):
    with client.stream("GET", image_url(client, Reply.ok(image="oversized"), fake)) as response:
        assert response.headers["content-type"] == "image/png"
        assert int(response.headers["content-length"]) == OVERSIZED_BYTES
        assert len(next(response.iter_raw())) > 0


def test_oversized_chunked_has_no_length_and_streams_until_the_client_leaves(fake, client):
    with client.stream("GET", image_url(client, Reply.ok(image="oversized_chunked"), fake)) as response:
        assert "content-length" not in response.headers
        assert response.headers["transfer-encoding"] == "chunked"
        received = 0
        for chunk in response.iter_raw():
            received += len(chunk)
            if received > 1024 * 1024:
                break
    assert received > 1024 * 1024


def test_sized_image_is_a_valid_png_of_exactly_that_size_distinct_per_file(fake, client):
    size = 3 * 1024 * 1024 + 7
    first_url, second_url = (image_url(client, Reply.ok(image_bytes=size), fake) for _ in range(2))
    first, second = client.get(first_url), client.get(second_url)
    assert int(first.headers["content-length"]) == size
    assert len(first.content) == len(second.content) == size
    assert png_size(first.content) == (1328, 1328) and first.content != second.content
    assert _chunks_are_sound(first.content)
    assert first.content == fake.served_image(first_url)
    [one, two] = fake.transfers
    assert one.complete and one.sent == size and one.sha256 == hashlib.sha256(first.content).hexdigest()
    assert one.ended_at is not None and one.ended_at >= one.started_at and two.complete


def test_sized_chunked_image_has_no_length(fake, client):
    url = image_url(client, Reply.ok(image_bytes=200_000, chunked=True), fake)
    response = client.get(url)
    assert "content-length" not in response.headers
    assert response.content == fake.served_image(url)


def test_default_image_size_applies_to_unscripted_replies_and_inline_images():
    with FakeImageApi(image_bytes=150_000) as sized, httpx.Client(base_url=sized.base_url, headers=AUTH) as client:
        url = client.post(GEN, json=simple_body()).json()["data"]["data"][0]["url"]
        assert len(client.get(url).content) == 150_000
        sized.script(Reply.ok(b64=True))
        inline = client.post(GEN, json=simple_body()).json()["data"]["data"][0]["b64_json"]
        assert len(base64.b64decode(inline)) == 150_000


def test_a_client_that_hangs_up_ends_the_transfer_incomplete(fake, client):
    size = 32 * 1024 * 1024
    with client.stream("GET", image_url(client, Reply.ok(image_bytes=size), fake)) as response:
        next(response.iter_raw())
    for _ in range(200):  # the fake notices the hang-up on its next write
        [transfer] = fake.transfers
        if transfer.ended_at is not None:
            break
        time.sleep(0.02)
    assert transfer.ended_at is not None and not transfer.complete and transfer.sent < size


def _chunks_are_sound(data: bytes) -> bool:
    """Every chunk's CRC matches and the file ends with IEND."""
    at, kinds = len(PNG_SIGNATURE), []
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, payload = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        if zlib.crc32(kind + payload) & 0xFFFFFFFF != crc:
            return False
        kinds.append(kind)
        at += 12 + length
    return at == len(data) and kinds[0] == b"IHDR" and kinds[-1] == b"IEND"


def test_redirect_defaults_to_a_good_image_on_the_fake(fake, client):
    response = client.get(image_url(client, Reply.ok(image="redirect"), fake))
    assert response.status_code == 302
    target = response.headers["location"]
    assert target.startswith(fake.url + "/files/")
    assert png_size(client.get(target).content) == (1328, 1328)


def test_redirect_to_a_forbidden_host(fake, client):
    url = image_url(client, Reply.ok(image="redirect", redirect_to="https://evil.example.com/x.png"), fake)
    response = client.get(url)
    assert (response.status_code, response.headers["location"]) == (302, "https://evil.example.com/x.png")


def test_no_image_is_a_success_envelope_with_no_data(fake, client):
    fake.script(Reply.no_image())
    response = client.post(GEN, json=simple_body())
    body = response.json()
    assert (response.status_code, body["code"], body["data"]["data"]) == (200, 200, [])
    assert body["data"]["metadata"]["request_id"] == response.headers["x-request-id"]
    assert fake.generation_count == 0


@pytest.mark.parametrize(
    ("reply", "status", "body", "retry_after"),
    [
        (Reply.error(429, retry_after=3), 429, {"code": 429, "msg": "Requests rate limit exceeded"}, "3"),
        (Reply.error(403), 403, {"code": 403, "msg": "Insufficient permissions or balance"}, None),
        (Reply.error(502, msg="upstream down", code=5021), 502, {"code": 5021, "msg": "upstream down"}, None),
        (Reply.body_error(500, "Internal error"), 200, {"code": 500, "msg": "Internal error"}, None),
        (
            Reply.content_rejected(),
            400,
            {"code": 400, "msg": "Output data may contain inappropriate content. (DataInspectionFailed)"},
            None,
        ),
    ],
)
def test_error_replies(fake, client, reply, status, body, retry_after):
    fake.script(reply)
    response = client.post(GEN, json=simple_body())
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {**body, "data": None}
    assert response.headers.get("retry-after") == retry_after
    uuid.UUID(response.headers["x-request-id"])
    assert fake.generation_count == 0 and fake.rate_limited_count == 0


def test_non_json_reply(fake, client):
    fake.script(Reply.non_json(), Reply.non_json(status=502, text="oops", content_type="text/plain"))
    first, second = client.post(GEN, json=simple_body()), client.post(GEN, json=simple_body())
    assert (first.status_code, first.headers["content-type"].split(";")[0]) == (200, "text/html")
    assert first.text == "<html>Bad gateway</html>"
    assert (second.status_code, second.text) == (502, "oops")
    uuid.UUID(second.headers["x-request-id"])


def test_drop_closes_the_connection_without_an_answer(fake, client):
    fake.script(Reply.drop())
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(GEN, json=simple_body())
    assert fake.requests[0].status is None
    assert client.post(GEN, json=simple_body()).status_code == 200  # the fake keeps serving


def test_hang_never_answers_and_stop_does_not_wait_for_it():
    with FakeImageApi() as fake, httpx.Client(base_url=fake.base_url, headers=AUTH, timeout=0.3) as c:
        fake.script(Reply.hang())
        with pytest.raises(httpx.ReadTimeout):
            c.post(GEN, json=simple_body())
    # leaving the with block stopped the fake; pytest-timeout would catch a 60 s shutdown wait


def test_latency_is_settable_after_start():
    with FakeImageApi() as fake, httpx.Client(base_url=fake.base_url, headers=AUTH, timeout=0.3) as c:
        fake.latency_s = 30.0
        with pytest.raises(httpx.ReadTimeout):
            c.post(GEN, json=simple_body())
        fake.latency_s = 0.0
        fake.script(Reply.ok(delay=30.0))  # a scripted delay wins over latency_s
        with pytest.raises(httpx.ReadTimeout):
            c.post(GEN, json=simple_body())
        assert c.post(GEN, json=simple_body()).status_code == 200


def test_reset_clears_script_and_records(fake, client):
    fake.script(Reply.error(500), Reply.error(500))
    client.post(GEN, json=simple_body())
    fake.reset()
    assert fake.pending_replies == 0 and fake.requests == [] and fake.downloads == []
    assert client.post(GEN, json=simple_body()).status_code == 200
    assert fake.generation_count == 1


def test_requests_are_copies(fake, client):
    client.post(GEN, json=simple_body())
    fake.requests[0].json["prompt"] = "changed"
    assert fake.requests[0].json["prompt"] == "A cute orange kitten"


# -- limits --------------------------------------------------------------------------------------------
def test_rpm_limit_refuses_with_429(fake, client):
    fake.rpm_limit = 2
    statuses = [client.post(GEN, json=simple_body()) for _ in range(3)]
    assert statuses[0].status_code == 200
    assert statuses[2].status_code == 429  # over 2 in 60 s whatever the timing
    refused = [r for r in statuses if r.status_code == 429]
    assert refused[0].json() == {"code": 429, "msg": "Requests rate limit exceeded", "data": None}
    assert refused[0].headers["retry-after"] == "1"
    assert fake.rate_limited_count == len(refused)
    assert fake.generation_count == 3 - len(refused)


def test_rpm_limit_spreads_starts_over_each_second(fake, client):
    now = [1000.0]
    fake._clock = lambda: now[0]  # a frozen clock makes the window arithmetic deterministic
    fake.rpm_limit = 120  # at most 2 starts in any second, 120 in any minute
    assert [client.post(GEN, json=simple_body()).status_code for _ in range(3)] == [200, 200, 429]
    now[0] += 0.5
    assert client.post(GEN, json=simple_body()).status_code == 429
    now[0] += 0.5
    assert [client.post(GEN, json=simple_body()).status_code for _ in range(3)] == [200, 200, 429]
    fake.rpm_limit = 4  # 4 already started in the last 60 s
    now[0] += 58.5
    assert client.post(GEN, json=simple_body()).status_code == 429
    now[0] += 1.0  # the first two fell out of the minute
    assert client.post(GEN, json=simple_body()).status_code == 200
    assert fake.rate_limited_count == 4


def test_stats_list_every_admitted_start_and_every_429(fake, client):
    now = [1000.0]
    fake._clock = lambda: now[0]
    fake.rpm_limit = 120  # 2 starts in any second
    assert [client.post(GEN, json=simple_body()).status_code for _ in range(3)] == [200, 200, 429]
    now[0] += 61.0  # the rate log forgets them; the stats do not
    assert client.post(GEN, json=simple_body()).status_code == 200
    stats = httpx.get(fake.url + "/_stats", timeout=10).json()
    assert stats["starts"] == fake.admitted_starts == [1000.0, 1000.0, 1061.0]
    assert stats["rate_limited_at"] == [1000.0]
    assert (stats["generation_count"], stats["rate_limited_count"], stats["requests"]) == (3, 1, 4)
    assert (stats["now"], stats["in_flight"], stats["max_in_flight"]) == (1061.0, 0, 1)
    fake.reset()
    assert fake.stats()["starts"] == [] and fake.stats()["rate_limited_at"] == []


def test_request_log_lists_arrival_answer_status_and_prompt_never_headers(fake, client):
    now = [1000.0]
    fake._clock = lambda: now[0]
    fake.rpm_limit = 60  # one start in any second
    assert client.post(GEN, json=simple_body("first")).status_code == 200
    assert client.post(GEN, json=messages_body("second", with_top_prompt=False)).status_code == 429
    now[0] += 1.0
    fake.script(Reply.error(500))
    assert client.post(GEN, json=simple_body("third")).status_code == 500
    log = httpx.get(fake.url + "/_requests", timeout=10).json()
    assert log == fake.request_log()
    assert [(r["prompt"], r["status"], r["received_at"], r["answered_at"]) for r in log] == [
        ("first", 200, 1000.0, 1000.0),
        ("second", 429, 1000.0, 1000.0),
        ("third", 500, 1001.0, 1001.0),
    ]
    assert all(r["request_id"] for r in log)
    assert "test-key" not in httpx.get(fake.url + "/_requests", timeout=10).text


def test_a_generation_whose_client_left_is_still_generated_and_answered(fake):
    """Like the provider: a client that disconnects mid-generation (a killed bot) is still billed."""
    fake.latency_s = 1.0
    with httpx.Client(base_url=fake.base_url, headers=AUTH, timeout=0.2) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            impatient.post(GEN, json=simple_body("abandoned"))
    # the client has gone; the fake goes on generating for nobody
    deadline = time.monotonic() + 10
    while fake.generation_count == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.generation_count == 1
    [record] = fake.request_log()
    assert record["prompt"] == "abandoned" and record["status"] == 200
    assert record["answered_at"] >= record["received_at"] + 1.0
    assert fake.stats()["in_flight"] == 0


async def test_concurrency_limit_refuses_with_429(fake):
    fake.concurrency_limit = 1
    fake.script(Reply.hang())
    async with httpx.AsyncClient(base_url=fake.base_url, headers=AUTH, timeout=10) as c:
        hanging = asyncio.create_task(c.post(GEN, json=simple_body()))
        for _ in range(500):  # until the hanging request is in flight
            if fake.requests and fake.requests[0].json is not None:
                break
            await asyncio.sleep(0.01)
        second = await c.post(GEN, json=simple_body())
        hanging.cancel()
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert fake.rate_limited_count == 1
    assert fake.max_in_flight == 2


# -- subprocess mode ------------------------------------------------------------------------------------
def test_runs_as_its_own_process():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "tests.fakes.image_api", "--port", "0", "--api-key", "k1", "--rpm", "60"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "the fake did not announce itself"
        tag, base_url = proc.stdout.readline().split()
        assert tag == "FAKE_IMAGE_API" and base_url.endswith("/v1")
        response = httpx.post(base_url + GEN, json=simple_body(), headers={"Authorization": "Bearer k1"}, timeout=10)
        assert response.status_code == 200
        assert png_size(httpx.get(response.json()["data"]["data"][0]["url"], timeout=10).content) == (
            1328,
            1328,
        )
    finally:
        proc.terminate()
        returncode = proc.wait(timeout=10)
    assert returncode == 0


def test_a_recorded_request_always_carries_its_body(fake):
    """A request whose body is still arriving is not shown yet: tests read `requests[-1].json` as
    soon as a request appears (it used to be None until the body had been read)."""
    import json
    import threading
    import time

    body = json.dumps(simple_body("slow body")).encode()

    def slow_body():
        yield body[:10]
        time.sleep(0.5)  # the headers and the first bytes are in; the rest is late
        yield body[10:]

    def send() -> None:
        with httpx.Client(base_url=fake.base_url, headers=AUTH, timeout=10) as c:
            c.post(GEN, content=slow_body(), headers={"Content-Type": "application/json"})

    sender = threading.Thread(target=send)
    sender.start()
    seen: list[object] = []
    deadline = time.monotonic() + 5
    while sender.is_alive() and time.monotonic() < deadline:
        seen.extend(r.json for r in fake.requests)
        time.sleep(0.01)
    sender.join()
    seen.extend(r.json for r in fake.requests)
    assert seen and all(isinstance(j, dict) and j["prompt"] == "slow body" for j in seen)
