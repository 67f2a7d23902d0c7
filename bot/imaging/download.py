"""Fetching the generated image: a security boundary, because the URL comes from a third party.

Rules: https only (plain http only when the configured gateway URL is itself http, and then only
to its own host and port: that is the loopback fake of local tests); the host must be in
IMAGE_HOST_ALLOWLIST or be the gateway's; redirects are followed by hand and each hop is checked
again; the body is streamed under IMAGE_MAX_BYTES (checked on Content-Length and on bytes read);
the content type and the magic bytes must both say PNG, JPEG or WebP; the whole fetch has a
deadline. Inline `b64_json` images pass the same size and type checks.

Memory: an image is never held whole. The body streams into a spool file of the image store
(`bot/storage/images.py`), hashed on the way, in batches of about FLUSH_BYTES; the magic bytes
are checked on the first bytes, before anything is written, and the byte cap before each chunk is
written, so a refused image leaves at most IMAGE_MAX_BYTES on disk, and only until it is deleted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urljoin, urlsplit

import httpx

from bot.imaging.errors import ForbiddenImageSource, ImageTooLarge, ImageUnavailable, UnsupportedImage
from bot.imaging.kinds import SNIFF_BYTES, sniff_kind
from bot.storage.images import ImageStore, OpenImage, Spool

log = logging.getLogger("imagine.imaging")

_REDIRECTS = (301, 302, 303, 307, 308)
_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/webp": "webp"}
#: downloaded bytes are written to the spool file in batches of about this size (one worker
#: thread hop each): what a download holds in memory besides the HTTP client's own buffers
FLUSH_BYTES = 256 * 1024
#: inline base64 is decoded this many characters at a time (a multiple of 4)
B64_STEP = 256 * 1024


class ImageFetcher:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        store: ImageStore,
        allowlist: Sequence[str],
        gateway_url: str,
        max_bytes: int,
        deadline_s: float = 60.0,
        max_redirects: int = 3,
        retries: int = 2,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._http = http
        self._store = store
        self._patterns = tuple(p.strip().lower() for p in allowlist if p.strip())
        gateway = urlsplit(gateway_url)
        self._gateway_host = (gateway.hostname or "").lower()
        # Where plain http may go: only to an http gateway's own host and port. An https gateway
        # (production) gets no http exception at all.
        self._http_origin = (self._gateway_host, gateway.port or 80) if gateway.scheme == "http" else None
        self._max_bytes = max_bytes
        self._deadline_s = deadline_s
        self._max_redirects = max_redirects
        self._retries = retries
        self._sleep = sleep

    # -- public -----------------------------------------------------------------------------------
    async def fetch(self, url: str, *, request_id: str | None = None) -> OpenImage:
        """Download and check, into the image store: the image, open (the caller closes it);
        transient failures (network, 5xx) are tried again a few times (each attempt on a spool file
        of its own)."""
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self._deadline_s):
                    return await self._fetch_once(url, request_id)
            except TimeoutError:
                error: ImageUnavailable = ImageUnavailable(
                    f"the image download took longer than {self._deadline_s:g} s", request_id=request_id
                )
            except ImageUnavailable as exc:
                error = exc
            if not error.retryable or attempt >= self._retries:
                raise error
            attempt += 1
            log.warning("image download failed (%s); retry %d/%d", error.message, attempt, self._retries)
            await self._sleep(0.5 * attempt)

    async def decode_b64(self, b64: str, *, request_id: str | None = None) -> OpenImage:
        """An inline image, into the image store: same size and type rules as a download; open (the
        caller closes it). Decoded a piece at a time in a worker thread, so its bytes never sit in
        memory whole beside the text."""
        if len(b64) * 3 // 4 > self._max_bytes + 3:
            raise self._too_large(len(b64) * 3 // 4, request_id)
        async with self._store.spool() as spool:
            kind = await asyncio.to_thread(self._decode_into, spool, b64, request_id)
            return await spool.commit(kind)

    def check_url(self, url: str, *, request_id: str | None = None) -> None:
        """Refuse anything but https to an allowed host (or http to the gateway itself, if it is http)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ForbiddenImageSource("the image URL is not a valid URL", request_id=request_id) from None
        host = (parts.hostname or "").lower()
        if parts.username or parts.password:
            raise ForbiddenImageSource("the image URL carries credentials", request_id=request_id)
        if parts.scheme == "http" and self._http_origin == (host, port or 80):
            return
        if parts.scheme != "https":
            raise ForbiddenImageSource(
                f"the image URL uses '{parts.scheme or 'no'}' scheme; only https is allowed",
                request_id=request_id,
            )
        if not (host == self._gateway_host or self._host_allowed(host)):
            raise ForbiddenImageSource(f"the image host '{host}' is not in IMAGE_HOST_ALLOWLIST", request_id=request_id)

    # -- internals ---------------------------------------------------------------------------------
    def _host_allowed(self, host: str) -> bool:
        for pattern in self._patterns:
            if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
            if host == pattern:
                return True
        return False

    async def _fetch_once(self, url: str, request_id: str | None) -> OpenImage:
        for _ in range(self._max_redirects + 1):
            self.check_url(url, request_id=request_id)
            try:
                async with self._http.stream("GET", url, follow_redirects=False) as response:
                    if response.status_code in _REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            raise ImageUnavailable("the image host redirected nowhere", request_id=request_id)
                        url = urljoin(url, location)
                        continue
                    return await self._read(response, request_id)
            except httpx.HTTPError as exc:
                raise ImageUnavailable(
                    f"the image download failed ({type(exc).__name__})", request_id=request_id, retryable=True
                ) from None
        raise ForbiddenImageSource("the image URL redirected too many times", request_id=request_id)

    async def _read(self, response: httpx.Response, request_id: str | None) -> OpenImage:
        if response.status_code != 200:
            raise ImageUnavailable(
                f"the image host answered HTTP {response.status_code}",
                status=response.status_code,
                request_id=request_id,
                retryable=response.status_code >= 500,
            )
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in _TYPES:
            raise UnsupportedImage(
                f"the image host sent '{content_type or 'no content type'}', not PNG/JPEG/WebP",
                request_id=request_id,
            )
        length = response.headers.get("content-length")
        if length and length.isdigit() and int(length) > self._max_bytes:
            raise self._too_large(int(length), request_id)
        async with self._store.spool() as spool:
            kind = await self._stream(response, spool, _TYPES[content_type], request_id)
            return await spool.commit(kind)

    async def _stream(self, response: httpx.Response, spool: Spool, declared: str, request_id: str | None) -> str:
        """The body into the spool file, checked as it comes; the image's kind."""
        head, kind = b"", None
        pending: list[bytes] = []
        pending_bytes = total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > self._max_bytes:  # before this chunk is written: never more than the cap on disk
                raise self._too_large(total, request_id, at_least=True)
            if kind is None:
                head += chunk[: SNIFF_BYTES - len(head)]
                if len(head) >= SNIFF_BYTES:  # decided before anything is written
                    kind = self._kind_of(head, declared, request_id)
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= FLUSH_BYTES and kind is not None:
                await spool.write(pending)
                pending, pending_bytes = [], 0
        if kind is None:  # a body shorter than SNIFF_BYTES
            kind = self._kind_of(head, declared, request_id)
        await spool.write(pending)
        return kind

    def _decode_into(self, spool: Spool, b64: str, request_id: str | None) -> str:
        """Decode `b64` into the spool file a piece at a time (in a worker thread); the image's kind."""
        kind: str | None = None
        for start in range(0, len(b64), B64_STEP):
            piece = b64[start : start + B64_STEP]
            # padding only at the very end, as when decoding the whole text at once
            if "=" in piece and start + B64_STEP < len(b64):
                raise UnsupportedImage("the inline image is not valid base64", request_id=request_id)
            try:
                data = base64.b64decode(piece, validate=True)
            except (binascii.Error, ValueError):
                raise UnsupportedImage("the inline image is not valid base64", request_id=request_id) from None
            if spool.written + len(data) > self._max_bytes:
                raise self._too_large(spool.written + len(data), request_id)
            if kind is None:
                kind = self._kind_of(data[:SNIFF_BYTES], None, request_id)
            spool.write_now([data])
        if kind is None:
            kind = self._kind_of(b"", None, request_id)
        return kind

    @staticmethod
    def _kind_of(head: bytes, declared: str | None, request_id: str | None) -> str:
        """The kind the first bytes show; refused unless an image, of the declared type if any."""
        kind = sniff_kind(head)
        if kind is None:
            raise UnsupportedImage("the image bytes are not PNG, JPEG or WebP", request_id=request_id)
        if declared is not None and declared != kind:
            raise UnsupportedImage(f"the image claims to be {declared} but its bytes are {kind}", request_id=request_id)
        return kind

    def _too_large(self, size: int, request_id: str | None, *, at_least: bool = False) -> ImageTooLarge:
        more = "more than " if at_least else ""
        return ImageTooLarge(
            f"the image is {more}{size:,} bytes; the limit (IMAGE_MAX_BYTES) is {self._max_bytes:,}",
            request_id=request_id,
        )
