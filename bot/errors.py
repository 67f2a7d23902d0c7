"""The root of every outcome a user or operator is told about.

Each error knows the CLI exit code it maps to; the sentence a person reads lives in
``bot.messages`` (one place for wording). Upstream outcomes live in ``bot.imaging.errors``.
"""

from __future__ import annotations

from datetime import datetime


class ImagineError(Exception):
    """Base class: an expected outcome with a clear meaning (not a bug)."""

    #: exit code of ``imagine-bot generate`` for this outcome
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ImagineError):
    """A setting is missing or invalid; ``message`` is one line naming the variable."""

    exit_code = 2


class InvalidInput(ImagineError):
    """The request is refused before any money is spent: empty, too long, bad size..."""

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class LimitReached(ImagineError):
    """A queue, quota or budget limit refuses the request; ``resets_at`` says when it lifts."""

    exit_code = 2

    def __init__(self, message: str, *, limit: str, resets_at: datetime | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.resets_at = resets_at
