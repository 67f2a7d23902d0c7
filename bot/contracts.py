"""The service's vocabulary, shared by the service, the job runner, the CLI and the Discord layer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from bot.errors import ImagineError
from bot.scheduler import QueuePosition
from bot.storage.images import OpenImage
from bot.storage.jobs import Job

CLI_GUILD = "cli"

#: shows an accepted request where its user sees it (Discord's public "thinking…"); returns the
#: id of the message later updates edit, when there is one
Acknowledge = Callable[[], Awaitable[int | None]]


def guild_key(guild_id: int | None) -> str:
    """The scheduler's queue of a guild (the CLI has one of its own)."""
    return f"guild:{guild_id}" if guild_id is not None else CLI_GUILD


class DeliveryError(Exception):
    """Posting the result failed; `retryable` for 429/5xx/dropped connections on the far side."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class PrivateReplyClosed(ImagineError):
    """A private result whose reply window closed first: it is never posted in the channel, so the
    delivery is not retried and the job fails (uncharged) with this sentence, told to the requester by DM."""


class JobInterrupted(ImagineError):
    """The bot stopped mid-request twice: the job is not submitted a third time."""


class ImageLost(ImagineError):
    """A generated image can no longer be fetched (no stored bytes, no URL)."""


class ShuttingDown(ImagineError):
    """The bot is stopping and accepts no new work."""


class Delivery(Protocol):
    """Where a job's progress and result go (a file for the CLI, a Discord message for the bot)."""

    async def queued(self, job: Job, position: QueuePosition) -> None: ...

    async def started(self, job: Job) -> None: ...

    async def deliver(self, job: Job, image: OpenImage) -> int | None:
        """Show the image; the id of the message that carries it, when there is one. Read
        `image.file` (seek to its start first) in pieces, never whole; the caller closes it. Its path
        may be gone already: another job may have released the same bytes."""

    async def failed(self, job: Job, error: BaseException) -> None: ...

    async def cancelled(self, job: Job) -> None: ...

    async def moderation(self, channel_id: int, text: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Requester:
    requester: str  # "cli" or the Discord user id
    guild_id: int | None = None
    channel_id: int | None = None
    user_id: int | None = None
    role_ids: tuple[int, ...] = ()  # the member's roles: role overrides of the limits
    locale: str | None = None  # the Discord client's language ("zh-CN"): replies in it
    guild_locale: str | None = None  # the server's preferred language: channel posts and the fallback

    @property
    def guild_key(self) -> str:
        return guild_key(self.guild_id)


@dataclass(frozen=True, slots=True)
class QueueStatus:
    running: int
    waiting: int
    mine: list[QueuePosition]  # the caller's waiting jobs, in order
    new_request_wait_s: float


@dataclass(frozen=True, slots=True)
class ReplyHandle:
    """Where a Discord job's progress is shown: the interaction's reply, while its token is valid."""

    token: str = field(repr=False)
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Ticket:
    job_id: int
    replayed: bool = False  # the id existed already: nothing new was queued
    cached: bool = False  # answered from the result cache (or shares an identical request in flight)
    #: where the job (or the job it follows) waits; asked only when someone wants to know, since
    #: placing one job in a long queue means ordering the whole queue
    locate: Callable[[], QueuePosition | None] | None = field(default=None, repr=False, compare=False)

    @property
    def position(self) -> QueuePosition | None:
        """The job's place in the queue now; None when it is not waiting."""
        return self.locate() if self.locate is not None else None
