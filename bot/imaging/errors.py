"""Typed outcomes of a call to the image API, one class per row of the error table.

Every error carries what the upstream said (HTTP status, body ``code`` and ``msg``) and the
upstream ``request_id`` when there is one, so logs can always name the request for support.
"""

from __future__ import annotations

from bot.errors import ImagineError


class UpstreamError(ImagineError):
    """Base for everything the gateway (or the image host) answered or failed to answer."""

    #: whether the client's retry policy may try again (one place decides: ``retry.py``)
    retryable: bool = False
    exit_code = 4

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | str | None = None,
        request_id: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id
        if retryable is not None:  # e.g. a dropped connection after the request was sent
            self.retryable = retryable

    def __str__(self) -> str:
        parts = [self.message]
        if self.code is not None:
            parts.append(f"code={self.code}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class BadRequest(UpstreamError):
    """400 (or another 4xx the table does not name): the parameters were refused."""

    exit_code = 3


class ContentRejected(BadRequest):
    """The provider's safety system refused the prompt: a 400 (or a body code) naming one of its
    safety refusals, as listed in ``client.SAFETY_CODES`` / ``client.SAFETY_TEXTS``."""


class AuthenticationFailed(UpstreamError):
    """401: the API key is invalid or expired. Operators must act; users see 'unavailable'."""

    exit_code = 3


class PermissionDenied(UpstreamError):
    """403: insufficient permission or balance (top up). Users see 'unavailable'."""

    exit_code = 3


class RateLimited(UpstreamError):
    """429: too many requests. ``retry_after`` (seconds) pauses the whole scheduler."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(UpstreamError):
    """5xx or 408, or a connection that failed before the request was sent."""

    retryable = True


class Timeout(UpstreamError):
    """No answer within the deadline. Not retried: the provider may have started (and billed)."""


class MalformedResponse(UpstreamError):
    """A 200 without a usable image, or a body that is not the JSON the spec describes."""


class ImageDownloadError(UpstreamError):
    """The image URL (or inline b64) was refused by the download safety checks or unreachable."""


class ForbiddenImageSource(ImageDownloadError):
    """The URL's scheme or host is not allowed (https + IMAGE_HOST_ALLOWLIST), or a redirect left it."""


class ImageTooLarge(ImageDownloadError):
    """The image exceeds IMAGE_MAX_BYTES (by Content-Length or by bytes read)."""


class UnsupportedImage(ImageDownloadError):
    """The content type or the magic bytes are not PNG, JPEG or WebP."""


class ImageUnavailable(ImageDownloadError):
    """The image host answered an error (404, 5xx) or the download failed or timed out."""
