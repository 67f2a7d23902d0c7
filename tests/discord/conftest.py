"""End-to-end harness: the real discord.py client (our ImagineBot) against the fake Discord and
the fake image API, with a real SQLite file in a temp dir."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from bot.app import ImagineBot
from bot.config import Settings
from tests.fakes.fake_discord import FakeDiscord, FakeMessage, SentInteraction
from tests.fakes.image_api import FakeImageApi


@pytest.fixture
def fake_discord() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord().start()
    restore = fake.point_discord_py_here()
    try:
        yield fake
    finally:
        restore()
        fake.stop()


@dataclass
class BotHarness:
    """Starts and stops ImagineBot instances against the fakes; helpers to drive and observe."""

    discord: FakeDiscord
    api: FakeImageApi
    make_settings: Callable[..., Settings]
    overrides: dict[str, Any] = field(default_factory=dict)
    bot: ImagineBot | None = None
    _task: asyncio.Task[None] | None = None

    def settings(self, **overrides: Any) -> Settings:
        values = {
            "discord_token": self.discord.bot_token,
            "upstream_rpm": 6000,  # tests of the limits set their own
            "shutdown_grace_s": 2,
            **self.overrides,
            **overrides,
        }
        return self.make_settings(**values)

    async def start(self, *, wall_clock: Callable[[], datetime] | None = None, **overrides: Any) -> ImagineBot:
        """Start a bot; `wall_clock` replaces the UTC clock of limits, periods and timestamps."""
        identifies = self.discord.identify_count
        extra = {"wall_clock": wall_clock} if wall_clock is not None else {}
        bot = ImagineBot(self.settings(**overrides), guild_ready_timeout=0.05, **extra)
        self.bot = bot
        self._task = asyncio.create_task(bot.start(self.discord.bot_token))
        await self.discord.wait_ready(min_identifies=identifies + 1)
        for _ in range(500):
            if bot.is_ready():
                break
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        assert bot.is_ready(), "the bot did not become ready"
        return bot

    async def stop(self, *, force: bool = False) -> None:
        """A graceful close (requests already sent upstream finish first); `force`: as after a
        second signal (the end of a test need not wait for a slow fake generation)."""
        if self.bot is not None:
            if force:
                self.bot.force_stop()
            await self.bot.close()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)
        self.bot, self._task = None, None

    async def crash(self) -> None:
        """Stop without any graceful step: tasks cancelled, nothing finished or written."""
        assert self.bot is not None and self._task is not None
        pipeline = self.bot.pipeline
        self.bot.pipeline = None  # close() must not drain
        if pipeline is not None:
            await pipeline.service.scheduler.stop(0)
            for task in list(pipeline.service.background.tasks):
                task.cancel()
            await pipeline.http.aclose()
            await pipeline.store.close()
        await self.stop()

    # -- driving -----------------------------------------------------------------------------
    def slash(self, name: str, options: dict[str, Any] | None = None, **kw: Any) -> SentInteraction:
        return self.discord.send_slash(name, options, **kw)

    async def reply(
        self, sent: SentInteraction, predicate: Callable[[FakeMessage], bool], timeout: float = 15
    ) -> FakeMessage:
        """Wait until the interaction's reply message satisfies the predicate."""

        def check(fake: FakeDiscord) -> FakeMessage | None:
            message = fake.original_message(sent.id)
            return message if message is not None and predicate(message) else None

        return await self.discord.wait_for(check, timeout=timeout)

    async def result(self, sent: SentInteraction, timeout: float = 15) -> FakeMessage:
        """The reply once it carries the image (edited in place)."""
        return await self.reply(sent, lambda m: bool(m.attachments), timeout)

    async def job(self, job_id: int, states=("delivered", "failed"), timeout: float = 15):
        assert self.bot is not None
        jobs = self.bot.service.jobs
        for _ in range(int(timeout / 0.02)):
            job = await jobs.get(job_id)
            if job is not None and job.state in states:
                return job
            await asyncio.sleep(0.02)
        raise AssertionError(f"job {job_id} did not reach {states}: {await jobs.get(job_id)}")


@pytest.fixture
async def harness(fake_discord: FakeDiscord, fake_api: FakeImageApi, make_settings) -> AsyncIterator[BotHarness]:
    harness = BotHarness(fake_discord, fake_api, make_settings)
    try:
        yield harness
    finally:
        await harness.stop(force=True)


EPHEMERAL = 64


def private_answer(fake: FakeDiscord, sent: SentInteraction, *, strict: bool = True) -> FakeMessage | None:
    """The interaction's one and only response when it was a private message (callback type 4,
    flag 64), else None. A refusal must be exactly that: after a public "thinking…" Discord keeps
    the next followup public (and a deleted "thinking…" leaves the user with nothing).

    `strict`: any other first response fails the test at once (instead of returning None).
    """
    callbacks = fake.callbacks(sent.id)
    if not callbacks or (not strict and callbacks != [4]):
        return None
    assert callbacks == [4], f"a refusal must be the first and only response, got callbacks {callbacks}"
    [payload] = fake.callback_payloads(sent.id)
    assert payload["data"].get("flags") == EPHEMERAL, payload
    message = fake.original_message(sent.id)
    assert message is not None and message.ephemeral and not message.deleted
    assert message.allowed_mentions == {"parse": []}
    assert fake.followups(sent.id) == []
    return message


async def private_refusal(harness: BotHarness, sent: SentInteraction, timeout: float = 10) -> str:
    """The refusal sentence, after checking it was the only, private, response and nothing was queued."""
    message = await harness.discord.wait_for(lambda f: private_answer(f, sent), timeout=timeout)
    assert harness.bot is not None
    assert await harness.bot.service.jobs.get(sent.id) is None  # no job row: nothing to charge
    return message.content
