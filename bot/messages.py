"""Every sentence a person reads about an outcome, in one place, keyed into the catalogues.

`describe(error, locale)` is what a Discord user (in their locale) or a CLI user (English) is
told; it never contains a secret and never blames the user for what the provider did.
"""

from __future__ import annotations

from bot.errors import ConfigError, ImagineError, InvalidInput, LimitReached
from bot.i18n import DEFAULT, Text, say
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

NOT_CHARGED = Text("error.not_charged")
STALLED = Text("error.stalled")


def describe(error: BaseException, locale: str = DEFAULT) -> str:
    """The sentence of the error table for this outcome, in `locale`."""
    return say(locale, _sentence(error))


def _sentence(error: BaseException) -> str:
    if isinstance(error, InvalidInput | LimitReached | ConfigError):
        return error.message
    if isinstance(error, ContentRejected):
        return Text("error.content_rejected")
    if isinstance(error, BadRequest):
        return Text("error.bad_request", detail=error.message)  # the provider's words, as it said them
    if isinstance(error, AuthenticationFailed | PermissionDenied):
        return Text("error.unavailable")
    if isinstance(error, RateLimited):
        return Text("error.rate_limited")
    if isinstance(error, ServerError | Timeout):
        return Text("error.upstream_failed")
    if isinstance(error, ImageDownloadError):
        return Text("error.download", detail=error.message)
    if isinstance(error, MalformedResponse):
        return Text("error.malformed")
    if isinstance(error, ImagineError):
        return _not_charged(error.message)
    return Text("error.ours")


def _not_charged(message: str) -> str:
    """The error's own words, saying once that nothing was charged: a message that says so
    already is left as it is, a complete sentence gets a sentence after it, a phrase a full stop."""
    if NOT_CHARGED in message:  # a Text is its English sentence: the test holds in every locale
        return message
    if message.rstrip().endswith((".", "!", "?", "。", "！", "？")):
        return Text("error.sentence", message=message)
    return Text("error.generic", message=message)


def operator_hint(error: BaseException) -> str | None:
    """What an operator should do, for outcomes only they can fix (logged and shown in the CLI)."""
    if isinstance(error, AuthenticationFailed):
        return "NEBULA_API_KEY was refused: check or renew the key."
    if isinstance(error, PermissionDenied):
        return "the gateway refused for permission or balance: top up the account or check the key's access."
    return None


INTERRUPTED = Text("error.interrupted")
DELIVERY_FAILED = Text("error.delivery_failed")
PRIVATE_REPLY_CLOSED = Text("error.private_reply_closed")
