"""The Discord bot: builds the pipeline in setup_hook, loads the cogs, syncs commands sparingly,
and shuts down gracefully (stop accepting, let running generations finish, keep the rest queued).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
from collections.abc import Callable
from datetime import datetime

import discord
import yarl
from discord.ext import commands

from bot.config import Settings
from bot.pipeline import Pipeline
from bot.requests import RequestBuilder
from bot.service import GenerationService
from bot.storage.db import utc_now
from bot.tree import ImagineTree
from bot.ui.delivery import DiscordDelivery, ViewFactory

log = logging.getLogger("imagine.app")

EXTENSIONS = ("cogs.imagine", "cogs.results", "cogs.admin")
COMMANDS_DIGEST_KEY = "commands_digest"


def point_at_discord(settings: Settings) -> None:
    """REST and gateway overrides (a REST proxy such as nirn-proxy, a gateway proxy, or a test fake).

    Both are process-global in discord.py, read each time a route or connection is made.
    """
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


class ImagineBot(commands.Bot):
    def __init__(
        self,
        settings: Settings,
        *,
        serve: bool = True,
        wall_clock: Callable[[], datetime] = utc_now,
        **options: object,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # the only intent needed: no privileged intents
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=ImagineTree,
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),  # the default for every message
            **options,  # type: ignore[arg-type]
        )
        self.settings = settings
        self.requests = RequestBuilder(settings)
        self.pipeline: Pipeline | None = None
        self._serve = serve  # False: only load the commands (for `imagine-bot sync`)
        self._closing = False
        self._wall_clock = wall_clock  # injectable: tests move midnight
        self._result_view: ViewFactory | None = None  # registered by the Results cog

    @property
    def service(self) -> GenerationService:
        if self.pipeline is None:
            raise RuntimeError("the bot is not set up yet")
        return self.pipeline.service

    def register_result_view(self, factory: ViewFactory | None) -> None:
        """The Results cog hands over the buttons to put under a delivered image (None on unload).

        Handed over, not imported: cogs import the bot (for its type), so the bot importing a cog
        would make an import cycle. Dependencies run one way, cogs -> bot; the bot knows its cogs
        only by their extension names.
        """
        self._result_view = factory

    def result_view(self, job_id: int) -> discord.ui.View:
        """The buttons for a delivered job (no buttons if the Results cog has been unloaded)."""
        if self._result_view is None:
            return discord.ui.View(timeout=None)
        return self._result_view(job_id)

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if not self._serve:
            return
        if self._result_view is None:
            raise RuntimeError("no result buttons: the cogs.results extension registers them when it loads")
        self.pipeline = await Pipeline.open(
            self.settings,
            DiscordDelivery(self, self.result_view, utcnow=self._wall_clock),
            wall_clock=self._wall_clock,
        )
        await self.sync_commands()
        await self.pipeline.service.start()  # resumes every unfinished job from the store

    async def sync_commands(self, *, force: bool = False) -> bool:
        """Sync to DEV_GUILD_ID at start, else globally only when the definitions changed."""
        if self.settings.dev_guild_id and not force:
            guild = discord.Object(self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
            log.info("commands synced to the development server %s", self.settings.dev_guild_id)
            return True
        assert self.pipeline is not None
        digest = commands_digest(self.tree)
        if not force and await self.pipeline.store.get_meta(COMMANDS_DIGEST_KEY) == digest:
            log.info("commands unchanged since the last sync; not syncing")
            return False
        await self.tree.sync()
        await self.pipeline.store.set_meta(COMMANDS_DIGEST_KEY, digest)
        log.info("commands synced globally (Discord may take up to an hour to show changes)")
        return True

    async def on_ready(self) -> None:
        log.info("connected as %s in %d server(s)", self.user, len(self.guilds))

    def force_stop(self) -> None:
        """A second signal: abandon requests in flight instead of waiting for them."""
        if self.pipeline is not None:
            self.pipeline.service.force_stop()

    async def close(self) -> None:
        if self.pipeline is not None and not self._closing:
            self._closing = True
            log.info(
                "stopping: requests already sent upstream finish (a second signal forces); deliveries get %g s",
                self.settings.shutdown_grace_s,
            )
            # new requests are refused ("restarting") while running ones finish and deliver
            await self.pipeline.close()
        await super().close()


def commands_digest(tree: discord.app_commands.CommandTree) -> str:
    payload = [command.to_dict(tree) for command in tree.get_commands()]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    settings.require("DISCORD_TOKEN", "NEBULA_API_KEY")
    assert settings.discord_token is not None
    point_at_discord(settings)
    stop = asyncio.Event()
    bot = ImagineBot(settings)

    def on_signal() -> None:
        if not stop.is_set():
            stop.set()  # graceful: requests already sent upstream finish first
            return
        log.warning("second signal: stopping now; each request in flight may be generated once more after restart")
        bot.force_stop()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    async with bot:
        running = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            stopping.cancel()
            error = running.exception()
            if isinstance(error, discord.LoginFailure):
                log.error("Discord refused DISCORD_TOKEN: check the token in .env (it may have been reset)")
                return 2
            if error is not None:
                raise error
            return 0
        await bot.close()
        await asyncio.gather(running, return_exceptions=True)
    return 0


async def force_sync(settings: Settings) -> int:
    """`imagine-bot sync`: push the command definitions to Discord now, globally."""
    from bot.storage.connect import open_store

    settings.require("DISCORD_TOKEN")
    assert settings.discord_token is not None
    point_at_discord(settings)
    bot = ImagineBot(settings, serve=False)
    store = await open_store(settings.database_url)
    try:
        async with bot:
            await bot.login(settings.discord_token.get_secret_value())
            synced = await bot.tree.sync()
            await store.set_meta(COMMANDS_DIGEST_KEY, commands_digest(bot.tree))
    finally:
        await store.close()
    print(f"synced {len(synced)} command(s) globally: " + ", ".join(f"/{c.name}" for c in synced))
    return 0
