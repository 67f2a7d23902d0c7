"""Showing a job's progress and result in Discord: one reply message, edited in place.

All edits go through the interaction's webhook, rebuilt from the job row (application id +
the stored token), so a restarted bot edits the same message as the one that took the
command. Edits of one job are serialized and coalesced (Discord limits edits per
interaction): a burst of queue moves becomes one edit, and once the result (or failure) is
posted no late status edit can overwrite it. When the 15-minute token has expired the result
goes to the channel instead, mentioning the requester (and only them); the job id is the
message nonce, so a retried post after a crash cannot appear twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp
import discord

from bot import messages
from bot.contracts import DeliveryError, PrivateReplyClosed
from bot.i18n import resolve, t
from bot.scheduler import QueuePosition
from bot.storage.images import OpenImage
from bot.storage.jobs import Job
from bot.ui import render

log = logging.getLogger("imagine.delivery")

# Discord answers these when an interaction token is no longer usable.
_TOKEN_GONE_CODES = {50027, 10015, 10008, 10062}
ViewFactory = Callable[[int, str], discord.ui.View]  # (job id, catalogue) -> the buttons


@dataclass
class _Reply:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    final: bool = False
    pending: tuple[str, discord.ui.View | None] | None = None  # the text, and the buttons under it
    task: asyncio.Task[None] | None = None
    last_edit: float = 0.0


class DiscordDelivery:
    MIN_EDIT_INTERVAL_S = 1.0
    #: stop using a token this long before it expires (an edit in flight must still land)
    TOKEN_MARGIN = timedelta(seconds=30)

    def __init__(
        self,
        client: discord.Client,
        view_factory: ViewFactory,
        *,
        utcnow: Callable[[], datetime] = lambda: datetime.now(UTC),
        queued_view: ViewFactory | None = None,
    ) -> None:
        self._client = client
        self._view_factory = view_factory
        self._queued_view = queued_view  # the Cancel button, while the job waits
        self._utcnow = utcnow
        self._replies: dict[int, _Reply] = {}

    # -- the service's Delivery protocol -----------------------------------------------------------
    # The reply is read by the requester: their language. A post in the channel (once the token has
    # expired) is read by the whole server: its language. Buttons are labelled in the message's language.
    async def queued(self, job: Job, position: QueuePosition) -> None:
        view = self._queued_view(job.id, _reader(job)) if self._queued_view is not None else None
        self._status(job, render.queued_text(job, position, _reader(job)), view)

    async def started(self, job: Job) -> None:
        self._status(job, render.generating_text(job, _reader(job)), None)  # sent: no Cancel any more

    async def deliver(self, job: Job, image: OpenImage) -> int | None:
        filename = render.image_filename(job, image.extension)
        now = self._utcnow()
        async with self._final(job):
            embed = render.result_embed(job, filename, now, _reader(job))
            async with _attachment(image, filename) as file:  # a File is consumed by one send
                if await self._edit_reply(
                    job,
                    content=None,
                    embed=embed,
                    attachments=[file],
                    view=self._view_factory(job.id, _reader(job)),
                ):
                    return job.message_id
            if job.private:  # never in the channel: the job fails uncharged and the requester hears by DM
                raise PrivateReplyClosed(messages.PRIVATE_REPLY_CLOSED)
            server = _server(job)
            async with _attachment(image, filename) as file:
                return await self._post_in_channel(
                    job,
                    content=t(server, "delivery.ready", user=job.user_id),
                    embed=render.result_embed(job, filename, now, server),
                    file=file,
                    view=self._view_factory(job.id, server),
                )

    async def failed(self, job: Job, error: BaseException) -> None:
        if job.channel_id is None:
            return
        async with self._final(job):
            text = render.failure_text(error, job, _reader(job))
            if await self._edit_reply(job, content=text, embed=None, attachments=[], view=None):
                return
            if job.private:  # a private request's failure is nobody else's business either
                await self._direct_message(job, text)
                return
            await self._post_in_channel(
                job, content=f"<@{job.user_id}> {render.failure_text(error, job, _server(job))}"
            )

    async def cancelled(self, job: Job) -> None:
        """The job was cancelled while it waited: its message says so, without buttons (final: no late
        queue position can bring the Cancel button back)."""
        if job.channel_id is None:
            return
        async with self._final(job):
            text = f"{render.cancelled_text(_reader(job))}\n{render.quote(job.prompt, 200)}"
            await self._edit_reply(job, content=text, embed=None, attachments=[], view=None)

    async def moderation(self, channel_id: int, text: str) -> None:
        """A line in a guild's moderation log channel; it names people but pings nobody."""
        channel = self._client.get_partial_messageable(channel_id)
        await channel.send(text[:2000], allowed_mentions=render.NO_PINGS)

    # -- edits of the reply ----------------------------------------------------------------------
    def _status(self, job: Job, text: str, view: discord.ui.View | None) -> None:
        if not self._token_usable(job):
            return  # no status spam in the channel: only the result is posted there
        reply = self._replies.setdefault(job.id, _Reply())
        if reply.final:
            return
        reply.pending = (text, view)
        if reply.task is None or reply.task.done():
            reply.task = asyncio.get_running_loop().create_task(self._flush_status(job, reply))

    async def _flush_status(self, job: Job, reply: _Reply) -> None:
        while reply.pending is not None and not reply.final:
            wait = reply.last_edit + self.MIN_EDIT_INTERVAL_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            async with reply.lock:
                if reply.final or reply.pending is None:
                    return
                (text, view), reply.pending = reply.pending, None
                try:
                    await self._webhook(job).edit_message(
                        job.message_id, content=text, view=view, allowed_mentions=render.NO_PINGS
                    )
                except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as exc:
                    log.info("job %s: status edit failed (%s)", job.id, type(exc).__name__)
                reply.last_edit = time.monotonic()

    def _final(self, job: Job) -> _FinalEdit:
        return _FinalEdit(self._replies, job.id)

    async def _edit_reply(self, job: Job, **payload: object) -> bool:
        """Edit the reply in place; False when the token can no longer be used (post instead)."""
        if not self._token_usable(job):
            return False
        try:
            await self._webhook(job).edit_message(
                job.message_id,
                allowed_mentions=render.NO_PINGS,
                **payload,  # type: ignore[arg-type]
            )
        except discord.HTTPException as exc:
            if exc.code in _TOKEN_GONE_CODES or exc.status == 401:
                log.info("job %s: the interaction token is no longer valid; posting in the channel", job.id)
                return False
            raise _delivery_error(exc) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _delivery_error(exc) from None
        return True

    async def _direct_message(self, job: Job, text: str) -> None:
        """Tell the requester privately (POST /users/@me/channels, then a message); a refusal (their
        DMs closed) is logged, not retried: the job is already settled."""
        if job.user_id is None:
            return
        try:
            channel = await self._client.create_dm(discord.Object(job.user_id))
            await channel.send(text[:2000], allowed_mentions=render.NO_PINGS)
        except (discord.HTTPException, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("job %s: could not DM the requester about their private result (%s)", job.id, exc)

    async def _post_in_channel(self, job: Job, *, content: str, **payload: object) -> int:
        if job.channel_id is None or job.user_id is None:
            raise DeliveryError("the job has no channel to post in", retryable=False)
        channel = self._client.get_partial_messageable(job.channel_id)
        try:
            message = await channel.send(
                content,
                allowed_mentions=render.requester_only(job.user_id),
                nonce=job.id,  # Discord drops a second message with the same nonce (enforce_nonce)
                **payload,  # type: ignore[arg-type]
            )
        except (discord.HTTPException, aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _delivery_error(exc) from None
        return message.id

    def _token_usable(self, job: Job) -> bool:
        if not job.interaction_token or job.message_id is None or not job.token_expires_at:
            return False
        expires = datetime.fromisoformat(job.token_expires_at)
        return self._utcnow() < expires - self.TOKEN_MARGIN

    def _webhook(self, job: Job) -> discord.Webhook:
        assert job.interaction_token is not None and self._client.application_id is not None
        return discord.Webhook.partial(self._client.application_id, job.interaction_token, client=self._client)


class _FinalEdit:
    """Holds the job's edit lock for the final message and drops any later status edit."""

    def __init__(self, replies: dict[int, _Reply], job_id: int) -> None:
        self._replies = replies
        self._job_id = job_id
        self._reply = replies.setdefault(job_id, _Reply())

    async def __aenter__(self) -> None:
        await self._reply.lock.acquire()
        self._reply.final = True
        self._reply.pending = None

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._reply.lock.release()
        if exc_type is None:
            self._replies.pop(self._job_id, None)
        else:
            self._reply.final = False  # the service retries the delivery


def _reader(job: Job) -> str:
    """The requester's catalogue (their client's language, else the server's)."""
    return resolve(job.locale, job.guild_locale)


def _server(job: Job) -> str:
    """The server's catalogue, for what its channel shows everyone."""
    return resolve(None, job.guild_locale)


@asynccontextmanager
async def _attachment(image: OpenImage, filename: str) -> AsyncIterator[discord.File]:
    """The image as an attachment over its open file: discord.py hands the file object to aiohttp,
    which reads it 64 KiB at a time in a worker thread as the upload goes out (and seeks back for a
    retried request), so an upload never holds the image in memory."""
    await asyncio.to_thread(image.file.seek, 0)  # a File starts where the file is
    file = discord.File(image.file, filename=filename, description="generated image")
    try:
        yield file
    finally:
        file.close()  # gives the file back its close() (discord.py stubs it out); the runner closes it


def _delivery_error(exc: BaseException) -> DeliveryError:
    if isinstance(exc, discord.HTTPException):
        retryable = exc.status == 429 or exc.status >= 500
        return DeliveryError(f"Discord answered {exc.status} (code {exc.code})", retryable=retryable)
    return DeliveryError(f"connection to Discord failed ({type(exc).__name__})", retryable=True)
