"""Every sentence a person reads about an outcome, in one place (one place to translate later).

`describe(error)` is what a Discord user or a CLI user is told; it never contains a secret
and never blames the user for what the provider did.
"""

from __future__ import annotations

from bot.errors import ConfigError, ImagineError, InvalidInput, LimitReached
from bot.imaging.errors import (
    AuthenticationFailed,
    BadRequest,
    ContentRejected,
    ImageDownloadError,
    MalformedResponse,
    PermissionDenied,
    RateLimited,
    ServerError,
    Timeout,
)

NOT_CHARGED = "Nothing was charged."
STALLED = (
    "Image generation is stalled right now and new requests would only wait; the bot's operators have been "
    "alerted. Try again in a few minutes."
)


def describe(error: BaseException) -> str:
    """The sentence of the error table for this outcome."""
    if isinstance(error, InvalidInput | LimitReached | ConfigError):
        return error.message
    if isinstance(error, ContentRejected):
        return f"The image provider refused this prompt (content safety). Rephrase it and try again. {NOT_CHARGED}"
    if isinstance(error, BadRequest):
        return f"The image service refused the request: {error.message}. {NOT_CHARGED}"
    if isinstance(error, AuthenticationFailed | PermissionDenied):
        return f"Image generation is unavailable right now; the bot's operators have been alerted. {NOT_CHARGED}"
    if isinstance(error, RateLimited):
        return f"The image service is too busy right now; try again in a few minutes. {NOT_CHARGED}"
    if isinstance(error, ServerError | Timeout):
        return f"The image service failed after several tries. {NOT_CHARGED} Please try again."
    if isinstance(error, ImageDownloadError):
        return f"The image could not be fetched safely from the image service ({error.message}). {NOT_CHARGED}"
    if isinstance(error, MalformedResponse):
        return f"The image service sent an unexpected reply. {NOT_CHARGED}"
    if isinstance(error, ImagineError):
        return f"{error.message}. {NOT_CHARGED}"
    return f"Something went wrong on our side. {NOT_CHARGED}"


def operator_hint(error: BaseException) -> str | None:
    """What an operator should do, for outcomes only they can fix (logged and shown in the CLI)."""
    if isinstance(error, AuthenticationFailed):
        return "NEBULA_API_KEY was refused: check or renew the key."
    if isinstance(error, PermissionDenied):
        return "the gateway refused for permission or balance: top up the account or check the key's access."
    return None


STILL_QUEUED_BUSY = "The image service is busy; your request is still queued."
INTERRUPTED = "The bot restarted while generating this image twice in a row; it was not retried again."
DELIVERY_FAILED = f"The image was generated but could not be posted to Discord. {NOT_CHARGED}"
