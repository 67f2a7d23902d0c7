"""The image download is a security boundary: every refusal, and the happy paths."""

from __future__ import annotations

import asyncio
import base64
import tracemalloc

import httpx
import pytest
from aiohttp import web

from bot.imaging.download import ImageFetcher, sniff_kind
from bot.imaging.errors import ForbiddenImageSource, ImageTooLarge, ImageUnavailable, UnsupportedImage
from tests.fakes.image_api import FakeImageApi
from tests.fakes.loopback import LoopbackServer
from tests.fakes.png import make_png, png_size


async def _no_sleep(_: float) -> None:
    return None


@pytest.fixture
async def http():
    async with httpx.AsyncClient() as client:
        yield client


def make_fetcher(http: httpx.AsyncClient, fake: FakeImageApi, **kw) -> ImageFetcher:
    options = {
        "allowlist": ["*.aliyuncs.com"],
        "gateway_url": fake.base_url,
        "max_bytes": 10 * 1024 * 1024,
        "sleep": _no_sleep,
    }
    options.update(kw)
    return ImageFetcher(http, **options)


async def generated_url(http: httpx.AsyncClient, fake: FakeImageApi, **reply) -> str:
    """Ask the fake for one image and return the URL it answered with."""
    from tests.conftest import TEST_API_KEY
    from tests.fakes.image_api import Reply

    fake.script(Reply.ok(**reply))
    response = await http.post(
        fake.base_url + "/images/generations",
        json={"model": "qwen-image-plus", "prompt": "p", "parameters": {"size": "1328*1328"}},
        headers={"Authorization": f"Bearer {TEST_API_KEY}"},
    )
    return response.json()["data"]["data"][0]["url"]


async def test_downloads_a_real_png_from_the_gateway_host(http, fake_api: FakeImageApi) -> None:
    url = await generated_url(http, fake_api)
    image = await make_fetcher(http, fake_api).fetch(url)
    assert image.kind == "png"
    assert png_size(image.data) == (1328, 1328)


async def test_jpeg_is_accepted(http, fake_api: FakeImageApi) -> None:
    url = await generated_url(http, fake_api, image="jpeg")
    image = await make_fetcher(http, fake_api).fetch(url)
    assert (image.kind, image.extension, image.content_type) == ("jpeg", "jpg", "image/jpeg")


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com/x.png",
        "https://aliyuncs.com.evil.example/x.png",
        "https://evilaliyuncs.com/x.png",
        "ftp://bucket.oss.aliyuncs.com/x.png",
        "http://bucket.oss.aliyuncs.com/x.png",  # plain http only for the gateway itself
        "https://user:pw@bucket.oss.aliyuncs.com/x.png",
        "file:///etc/passwd",
        "not a url",
    ],
)
async def test_forbidden_sources_are_refused_before_connecting(http, fake_api: FakeImageApi, url: str) -> None:
    with pytest.raises(ForbiddenImageSource):
        await make_fetcher(http, fake_api).fetch(url)


def test_allowlist_matches_subdomains_only(http, fake_api: FakeImageApi) -> None:
    fetcher = make_fetcher(http, fake_api, allowlist=["*.aliyuncs.com", "cdn.example.com"])
    fetcher.check_url("https://dashscope-result.oss-cn-wulanchabu.aliyuncs.com/a.png")
    fetcher.check_url("https://cdn.example.com/a.png")
    with pytest.raises(ForbiddenImageSource):
        fetcher.check_url("https://sub.cdn.example.com/a.png")


async def test_plain_http_to_another_port_of_the_gateway_host_is_refused(http, fake_api: FakeImageApi) -> None:
    with pytest.raises(ForbiddenImageSource):
        await make_fetcher(http, fake_api).fetch(f"http://127.0.0.1:{fake_api._server.port + 1}/files/x.png")


@pytest.mark.parametrize(
    "url",
    [
        "http://llm.ai-nebula.com/files/x.png",
        "http://llm.ai-nebula.com:443/files/x.png",
        "http://llm.ai-nebula.com:80/files/x.png",
    ],
)
def test_plain_http_to_an_https_gateway_is_refused(http, url: str) -> None:
    """Plain http is for a gateway that is itself http (the loopback fake), never for the real one."""
    fetcher = ImageFetcher(http, allowlist=[], gateway_url="https://llm.ai-nebula.com/v1", max_bytes=1024)
    fetcher.check_url("https://llm.ai-nebula.com/files/x.png")  # https to the gateway's host: fine
    with pytest.raises(ForbiddenImageSource, match="only https"):
        fetcher.check_url(url)


def test_plain_http_is_allowed_to_an_http_gateway_only(http) -> None:
    fetcher = ImageFetcher(http, allowlist=["*.aliyuncs.com"], gateway_url="http://127.0.0.1:8080/v1", max_bytes=1024)
    fetcher.check_url("http://127.0.0.1:8080/files/x.png")
    for url in ("http://127.0.0.1/files/x.png", "http://127.0.0.1:8081/files/x.png", "http://localhost:8080/x.png"):
        with pytest.raises(ForbiddenImageSource):
            fetcher.check_url(url)


async def test_redirect_to_a_forbidden_host_is_refused(http, fake_api: FakeImageApi) -> None:
    url = await generated_url(http, fake_api, image="redirect", redirect_to="https://evil.example.com/x.png")
    with pytest.raises(ForbiddenImageSource, match="evil.example.com"):
        await make_fetcher(http, fake_api).fetch(url)


async def test_redirect_within_the_allowed_hosts_is_followed(http, fake_api: FakeImageApi) -> None:
    target = await generated_url(http, fake_api)
    url = await generated_url(http, fake_api, image="redirect", redirect_to=target)
    image = await make_fetcher(http, fake_api).fetch(url)
    assert image.kind == "png"


async def test_missing_image_is_unavailable(http, fake_api: FakeImageApi) -> None:
    url = await generated_url(http, fake_api, image="missing")
    with pytest.raises(ImageUnavailable, match="404"):
        await make_fetcher(http, fake_api).fetch(url, request_id="req-1")


async def test_oversized_by_content_length_is_refused_without_reading(http, fake_api: FakeImageApi) -> None:
    url = await generated_url(http, fake_api, image="oversized")
    with pytest.raises(ImageTooLarge, match="67,108,864 bytes"):
        await make_fetcher(http, fake_api).fetch(url)


async def test_oversized_stream_is_cut_at_the_cap(http, fake_api: FakeImageApi) -> None:
    url = await generated_url(http, fake_api, image="oversized_chunked")
    with pytest.raises(ImageTooLarge, match="more than"):
        await make_fetcher(http, fake_api, max_bytes=1024 * 1024).fetch(url)


async def test_real_image_over_a_small_cap_is_refused(http, fake_api: FakeImageApi) -> None:
    url = await generated_url(http, fake_api)
    with pytest.raises(ImageTooLarge):
        await make_fetcher(http, fake_api, max_bytes=2048).fetch(url)


async def test_wrong_content_type_is_refused(http, fake_api: FakeImageApi) -> None:
    url = await generated_url(http, fake_api, image="wrong_type")
    with pytest.raises(UnsupportedImage, match="text/html"):
        await make_fetcher(http, fake_api).fetch(url)


async def test_bytes_that_are_not_an_image_are_refused(http, fake_api: FakeImageApi) -> None:
    url = await generated_url(http, fake_api, image="bad_magic")
    with pytest.raises(UnsupportedImage, match="bytes"):
        await make_fetcher(http, fake_api).fetch(url)


async def test_slow_download_hits_the_deadline(http) -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        await response.write(b"\x89PNG\r\n\x1a\n")
        await asyncio.sleep(30)  # cancelled when the server stops
        return response

    app = web.Application()
    app.router.add_get("/slow.png", trickle)
    with LoopbackServer(app) as server:
        fetcher = ImageFetcher(http, allowlist=[], gateway_url=server.url, max_bytes=1024, deadline_s=0.3, retries=0)
        with pytest.raises(ImageUnavailable, match="longer than"):
            await fetcher.fetch(server.url + "/slow.png")


def test_inline_b64_is_decoded_with_the_same_checks(http, fake_api: FakeImageApi) -> None:
    fetcher = make_fetcher(http, fake_api, max_bytes=100_000)
    png = make_png(64, 32)
    assert fetcher.decode_b64(base64.b64encode(png).decode()).data == png
    with pytest.raises(UnsupportedImage, match="base64"):
        fetcher.decode_b64("not base64 !!")
    with pytest.raises(UnsupportedImage):
        fetcher.decode_b64(base64.b64encode(b"<html>hi</html>").decode())
    with pytest.raises(ImageTooLarge):
        fetcher.decode_b64(base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(200_000)).decode())


def test_sniffing_magic_bytes() -> None:
    assert sniff_kind(make_png(2, 2)) == "png"
    assert sniff_kind(b"\xff\xd8\xff\xe0rest") == "jpeg"
    assert sniff_kind(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_kind(b"GIF89a") is None


async def test_a_large_image_is_never_held_in_memory_while_it_downloads(http, fake_api: FakeImageApi) -> None:
    """An 8 MiB image (real ones are 2-7 MB) streams through: the download's allocations stay a small
    fraction of the image (measured with tracemalloc; the fake's own file is built before tracing)."""
    eight_mib = 8 * 1024 * 1024
    url = await generated_url(http, fake_api, image_bytes=eight_mib)
    fake_api.served_image(url)  # the fake builds (and caches) its bytes here, outside the measurement
    tracemalloc.start()
    try:
        image = await make_fetcher(http, fake_api).fetch(url)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.kind == "png"
    assert peak < eight_mib // 4, f"the download allocated up to {peak:,} bytes for an {eight_mib:,}-byte image"
