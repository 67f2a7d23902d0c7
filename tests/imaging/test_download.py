"""The image download is a security boundary: every refusal, and the happy paths."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from bot.imaging.download import B64_STEP, ImageFetcher
from bot.imaging.errors import ForbiddenImageSource, ImageTooLarge, ImageUnavailable, UnsupportedImage
from bot.imaging.kinds import sniff_kind
from bot.storage.images import ImageStore, Spool
from tests.fakes.image_api import FakeImageApi
from tests.fakes.loopback import LoopbackServer
from tests.fakes.png import make_png, png_size, sized_png
from tests.images import read_image


async def _no_sleep(_: float) -> None:
    return None


@pytest.fixture
async def http():
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def make_fetcher(http: httpx.AsyncClient, fake: FakeImageApi, store: ImageStore, **kw) -> ImageFetcher:
    options = {
        "store": store,
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


async def test_downloads_a_real_png_from_the_gateway_host(http, fake_api: FakeImageApi, store: ImageStore) -> None:
    url = await generated_url(http, fake_api)
    image = await make_fetcher(http, fake_api, store).fetch(url)
    await image.close()
    assert image.kind == "png"
    assert png_size(image.path.read_bytes()) == (1328, 1328)
    assert image.path == store.path_for(image.sha256) and image.size == image.path.stat().st_size
    assert hashlib.sha256(image.path.read_bytes()).hexdigest() == image.sha256
    assert _spooled(store) == []


async def test_the_download_is_read_through_its_open_file_even_once_its_path_is_gone(
    http, fake_api: FakeImageApi, store: ImageStore
) -> None:
    """Identical bytes share one file, which another job may release meanwhile: the open file a
    download returns still reads the whole image."""
    url = await generated_url(http, fake_api, image_bytes=3 * 1024 * 1024)
    image = await make_fetcher(http, fake_api, store).fetch(url)
    try:
        image.path.unlink()
        assert read_image(image) == fake_api.served_image(url)
    finally:
        await image.close()


async def test_jpeg_is_accepted(http, fake_api: FakeImageApi, store: ImageStore) -> None:
    url = await generated_url(http, fake_api, image="jpeg")
    image = await make_fetcher(http, fake_api, store).fetch(url)
    await image.close()
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
async def test_forbidden_sources_are_refused_before_connecting(
    http, fake_api: FakeImageApi, store: ImageStore, url: str
) -> None:
    with pytest.raises(ForbiddenImageSource):
        await make_fetcher(http, fake_api, store).fetch(url)


def test_allowlist_matches_subdomains_only(http, fake_api: FakeImageApi, store: ImageStore) -> None:
    fetcher = make_fetcher(http, fake_api, store, allowlist=["*.aliyuncs.com", "cdn.example.com"])
    fetcher.check_url("https://dashscope-result.oss-cn-wulanchabu.aliyuncs.com/a.png")
    fetcher.check_url("https://cdn.example.com/a.png")
    with pytest.raises(ForbiddenImageSource):
        fetcher.check_url("https://sub.cdn.example.com/a.png")


async def test_plain_http_to_another_port_of_the_gateway_host_is_refused(
    http, fake_api: FakeImageApi, store: ImageStore
) -> None:
    with pytest.raises(ForbiddenImageSource):
        await make_fetcher(http, fake_api, store).fetch(f"http://127.0.0.1:{fake_api._server.port + 1}/files/x.png")


@pytest.mark.parametrize(
    "url",
    [
        "http://llm.ai-nebula.com/files/x.png",
        "http://llm.ai-nebula.com:443/files/x.png",
        "http://llm.ai-nebula.com:80/files/x.png",
    ],
)
def test_plain_http_to_an_https_gateway_is_refused(http, store: ImageStore, url: str) -> None:
    """Plain http is for a gateway that is itself http (the loopback fake), never for the real one."""
    fetcher = ImageFetcher(http, store=store, allowlist=[], gateway_url="https://llm.ai-nebula.com/v1", max_bytes=1024)
    fetcher.check_url("https://llm.ai-nebula.com/files/x.png")  # https to the gateway's host: fine
    with pytest.raises(ForbiddenImageSource, match="only https"):
        fetcher.check_url(url)


def test_plain_http_is_allowed_to_an_http_gateway_only(http, store: ImageStore) -> None:
    fetcher = ImageFetcher(
        http, store=store, allowlist=["*.aliyuncs.com"], gateway_url="http://127.0.0.1:8080/v1", max_bytes=1024
    )
    fetcher.check_url("http://127.0.0.1:8080/files/x.png")
    for url in ("http://127.0.0.1/files/x.png", "http://127.0.0.1:8081/files/x.png", "http://localhost:8080/x.png"):
        with pytest.raises(ForbiddenImageSource):
            fetcher.check_url(url)


async def test_redirect_to_a_forbidden_host_is_refused(http, fake_api: FakeImageApi, store: ImageStore) -> None:
    url = await generated_url(http, fake_api, image="redirect", redirect_to="https://evil.example.com/x.png")
    with pytest.raises(ForbiddenImageSource, match="evil.example.com"):
        await make_fetcher(http, fake_api, store).fetch(url)


async def test_redirect_within_the_allowed_hosts_is_followed(http, fake_api: FakeImageApi, store: ImageStore) -> None:
    target = await generated_url(http, fake_api)
    url = await generated_url(http, fake_api, image="redirect", redirect_to=target)
    image = await make_fetcher(http, fake_api, store).fetch(url)
    await image.close()
    assert image.kind == "png"


async def test_missing_image_is_unavailable(http, fake_api: FakeImageApi, store: ImageStore) -> None:
    url = await generated_url(http, fake_api, image="missing")
    with pytest.raises(ImageUnavailable, match="404"):
        await make_fetcher(http, fake_api, store).fetch(url, request_id="req-1")


async def test_oversized_by_content_length_is_refused_without_reading(
    http, fake_api: FakeImageApi, store: ImageStore
) -> None:
    url = await generated_url(http, fake_api, image="oversized")
    with pytest.raises(ImageTooLarge, match="67,108,864 bytes"):
        await make_fetcher(http, fake_api, store).fetch(url)


async def test_oversized_stream_is_cut_at_the_cap_with_no_more_than_the_cap_on_disk(
    http, fake_api: FakeImageApi, tmp_path: Path
) -> None:
    """A real PNG of 64 MiB sent without a length: refused once the bytes read pass the cap, and what
    reached the spool file before that was never more than the cap (and is gone)."""
    store = RecordingStore(tmp_path / "images")
    url = await generated_url(http, fake_api, image_bytes=64 * 1024 * 1024, chunked=True)
    cap = 1024 * 1024
    with pytest.raises(ImageTooLarge, match="more than"):
        await make_fetcher(http, fake_api, store, max_bytes=cap).fetch(url)
    assert store.spools and all(0 < spool.written <= cap for spool in store.spools)
    assert not any(spool.path.exists() for spool in store.spools) and _files(store) == []
    [transfer] = fake_api.transfers
    assert not transfer.complete  # the bot hung up


async def test_bytes_that_are_not_an_image_are_refused_on_the_first_chunk(
    http, fake_api: FakeImageApi, tmp_path: Path
) -> None:
    """64 MiB of junk labelled image/png: the magic bytes refuse it before anything is written."""
    store = RecordingStore(tmp_path / "images")
    url = await generated_url(http, fake_api, image="oversized_chunked")
    with pytest.raises(UnsupportedImage, match="not PNG, JPEG or WebP"):
        await make_fetcher(http, fake_api, store).fetch(url)
    assert [spool.written for spool in store.spools] == [0] and _files(store) == []


async def test_real_image_over_a_small_cap_is_refused(http, fake_api: FakeImageApi, store: ImageStore) -> None:
    url = await generated_url(http, fake_api)
    with pytest.raises(ImageTooLarge):
        await make_fetcher(http, fake_api, store, max_bytes=2048).fetch(url)


async def test_wrong_content_type_is_refused(http, fake_api: FakeImageApi, store: ImageStore) -> None:
    url = await generated_url(http, fake_api, image="wrong_type")
    with pytest.raises(UnsupportedImage, match="text/html"):
        await make_fetcher(http, fake_api, store).fetch(url)


async def test_bytes_that_are_not_an_image_are_refused(http, fake_api: FakeImageApi, store: ImageStore) -> None:
    url = await generated_url(http, fake_api, image="bad_magic")
    with pytest.raises(UnsupportedImage, match="bytes"):
        await make_fetcher(http, fake_api, store).fetch(url)


async def test_slow_download_hits_the_deadline(http, store: ImageStore) -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        await response.write(b"\x89PNG\r\n\x1a\n")
        await asyncio.sleep(30)  # cancelled when the server stops
        return response

    app = web.Application()
    app.router.add_get("/slow.png", trickle)
    with LoopbackServer(app) as server:
        fetcher = ImageFetcher(
            http, store=store, allowlist=[], gateway_url=server.url, max_bytes=1024, deadline_s=0.3, retries=0
        )
        with pytest.raises(ImageUnavailable, match="longer than"):
            await fetcher.fetch(server.url + "/slow.png")
    assert _spooled(store) == []  # the download cut short by its deadline left nothing behind


async def test_inline_b64_is_decoded_with_the_same_checks(http, fake_api: FakeImageApi, store: ImageStore) -> None:
    fetcher = make_fetcher(http, fake_api, store, max_bytes=100_000)
    png = make_png(64, 32)
    image = await fetcher.decode_b64(base64.b64encode(png).decode())
    assert (read_image(image), image.kind, image.size) == (png, "png", len(png))
    await image.close()
    with pytest.raises(UnsupportedImage, match="base64"):
        await fetcher.decode_b64("not base64 !!")
    with pytest.raises(UnsupportedImage):
        await fetcher.decode_b64(base64.b64encode(b"<html>hi</html>").decode())
    with pytest.raises(ImageTooLarge):
        await fetcher.decode_b64(base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(200_000)).decode())
    with pytest.raises(UnsupportedImage):
        await fetcher.decode_b64("")
    assert _spooled(store) == []


def test_sniffing_magic_bytes() -> None:
    assert sniff_kind(make_png(2, 2)) == "png"
    assert sniff_kind(b"\xff\xd8\xff\xe0rest") == "jpeg"
    assert sniff_kind(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_kind(b"GIF89a") is None


async def test_a_large_image_is_never_held_in_memory_while_it_downloads(
    http, fake_api: FakeImageApi, store: ImageStore
) -> None:
    """An 8 MiB image (real ones are 2-7 MB) streams through: the download's allocations stay a small
    fraction of the image (measured with tracemalloc; the fake's own file is built before tracing)."""
    eight_mib = 8 * 1024 * 1024
    url = await generated_url(http, fake_api, image_bytes=eight_mib)
    fake_api.served_image(url)  # the fake builds (and caches) its bytes here, outside the measurement
    tracemalloc.start()
    try:
        image = await make_fetcher(http, fake_api, store).fetch(url)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    await image.close()
    assert image.kind == "png"
    assert peak < eight_mib // 4, f"the download allocated up to {peak:,} bytes for an {eight_mib:,}-byte image"
    assert image.path.read_bytes() == fake_api.served_image(url) and image.size == eight_mib
    assert _spooled(store) == []  # renamed into the store


async def test_inline_b64_is_decoded_piece_by_piece(http, fake_api: FakeImageApi, store: ImageStore) -> None:
    """A 6 MiB inline image: decoding allocates a small fraction of it (the text itself aside)."""
    six_mib = 6 * 1024 * 1024
    png = sized_png(1328, 1328, 1, six_mib, b"inline")
    text = base64.b64encode(png).decode()
    tracemalloc.start()
    try:
        image = await make_fetcher(http, fake_api, store).decode_b64(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    await image.close()
    assert image.path.read_bytes() == png and image.sha256 == hashlib.sha256(png).hexdigest()
    assert peak < six_mib // 4, f"decoding allocated up to {peak:,} bytes for a {six_mib:,}-byte image"


async def test_padding_inside_the_base64_is_refused(http, fake_api: FakeImageApi, store: ImageStore) -> None:
    """Decoded piece by piece, the text is still checked as a whole: '=' only at its very end."""
    png = sized_png(64, 32, 0, 600_000)
    text = base64.b64encode(png).decode()
    broken = text[: B64_STEP - 4] + "AA==" + text[B64_STEP:]  # padding closing the first piece
    with pytest.raises(UnsupportedImage, match="base64"):
        await make_fetcher(http, fake_api, store).decode_b64(broken)
    assert _spooled(store) == [] and _files(store) == []


async def test_a_download_cut_mid_body_leaves_no_file_after_its_retries(http, tmp_path: Path) -> None:
    """The host drops the connection after 1 MiB of a declared 8 MiB, three times: each attempt had
    a spool file of its own, and each one is gone."""
    store = RecordingStore(tmp_path / "images")
    png = sized_png(64, 32, 0, 8 * 1024 * 1024)

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(png)
        await response.prepare(request)
        await response.write(png[: 1024 * 1024])
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_get("/cut.png", cut)
    with LoopbackServer(app) as server:
        fetcher = ImageFetcher(
            http, store=store, allowlist=[], gateway_url=server.url, max_bytes=10 * 1024 * 1024, sleep=_no_sleep
        )
        with pytest.raises(ImageUnavailable):
            await fetcher.fetch(server.url + "/cut.png")
    assert len(store.spools) == 3 and all(spool.written > 0 for spool in store.spools)
    assert _spooled(store) == [] and _files(store) == []


async def test_a_cancelled_download_removes_its_spool_file(http, tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "images")

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        await response.write(sized_png(64, 32, 0, 600_000))  # more than one flush
        await asyncio.sleep(30)  # cancelled when the server stops
        return response

    app = web.Application()
    app.router.add_get("/slow.png", trickle)
    with LoopbackServer(app) as server:
        fetcher = ImageFetcher(http, store=store, allowlist=[], gateway_url=server.url, max_bytes=10 * 1024 * 1024)
        task = asyncio.create_task(fetcher.fetch(server.url + "/slow.png"))
        for _ in range(500):  # until bytes are on disk
            if store.spools and store.spools[0].written:
                break
            await asyncio.sleep(0.01)
        assert store.spools and store.spools[0].written > 0 and _spooled(store)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert _spooled(store) == [] and _files(store) == []


class RecordingStore(ImageStore):
    """The real store, remembering the spool files it handed out (to see what reached the disk)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.spools: list[Spool] = []

    @asynccontextmanager
    async def spool(self) -> AsyncIterator[Spool]:
        async with super().spool() as spool:
            self.spools.append(spool)
            yield spool


def _spooled(store: ImageStore) -> list[Path]:
    """Files in the store's spool folder."""
    return sorted(store.spool_dir.glob("*")) if store.spool_dir.exists() else []


def _files(store: ImageStore) -> list[Path]:
    """Every file under the store's root, spool included."""
    return sorted(p for p in store.root.rglob("*") if p.is_file()) if store.root.exists() else []
