"""The Discord bot: builds the pipeline in setup_hook, loads the cogs, syncs commands sparingly,
and shuts down gracefully (stop accepting, let running generations finish, keep the rest queued).

Sharding (SHARD_COUNT, SHARD_IDS): the bot is an `AutoShardedBot`, so one process runs the shards
it is given (all of them by default; without SHARD_COUNT, as many as Discord recommends). With a
shared store (PostgreSQL) any process runs any job and delivers it through the interaction's
webhook or a channel post, which need no gateway connection: a process with no shard at all
(SHARD_IDS=none, a pure worker) logs in over REST and only runs jobs. Only the process with
shard 0 syncs the commands.
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

from bot import i18n
from bot.config import Settings
from bot.gateway_metrics import GatewayGauges, interaction_labels
from bot.loop_lag import LoopLagMonitor
from bot.metrics import Metrics
from bot.ops_server import OpsServer
from bot.pipeline import Pipeline
from bot.readiness import Readiness
from bot.requests import RequestBuilder
from bot.service import GenerationService
from bot.storage.db import utc_now
from bot.translator import CatalogueTranslator
from bot.tree import ImagineTree
from bot.ui.delivery import DiscordDelivery, ViewFactory

log = logging.getLogger("imagine.app")

EXTENSIONS = ("cogs.imagine", "cogs.results", "cogs.admin", "cogs.personal")
COMMANDS_DIGEST_KEY = "commands_digest"


def point_at_discord(settings: Settings) -> None:
    """REST and gateway overrides (a REST proxy such as nirn-proxy, a gateway proxy, or a test fake).

    Both are process-global in discord.py, read each time a route or connection is made.
    """
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def describe_shards(settings: Settings) -> str:
    """What this process connects, for log lines: 'every shard', 'shards 0, 1 of 4', 'no shard'."""
    if settings.pure_worker:
        return "no shard (a pure worker: SHARD_IDS=none)"
    if settings.shard_count is None:
        return "every shard (as many as Discord recommends)"
    if settings.shard_ids is None:
        return f"every shard of {settings.shard_count}"
    ids = ", ".join(str(i) for i in settings.shard_ids)
    return f"shard{'s' if len(settings.shard_ids) > 1 else ''} {ids} of {settings.shard_count}"


class ImagineBot(commands.AutoShardedBot):
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
        if settings.shard_ids:
            options.setdefault("shard_ids", list(settings.shard_ids))
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=ImagineTree,
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),  # the default for every message
            shard_count=settings.shard_count,  # None: discord.py asks Discord (GET /gateway/bot)
            **options,  # type: ignore[arg-type]
        )
        self.settings = settings
        self.requests = RequestBuilder(settings)
        self.pipeline: Pipeline | None = None
        self._serve = serve  # False: only load the commands (for `imagine-bot sync`)
        self._closing = False
        self._wall_clock = wall_clock  # injectable: tests move midnight
        self._result_view: ViewFactory | None = None  # registered by the Results cog
        self._queued_view: ViewFactory | None = None  # the Cancel button, registered by the Results cog too
        self._closed = asyncio.Event()  # set once close() is done: a pure worker's connect() returns
        # this bot's own figures (a registry per instance); served only when METRICS_PORT is set
        self.metrics = Metrics(wall_clock=wall_clock)
        self.metrics.registry.register(GatewayGauges(self))
        self.ops_server: OpsServer | None = None
        self._loop_lag = LoopLagMonitor(self.metrics.loop_lag)

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

    def register_queued_view(self, factory: ViewFactory | None) -> None:
        """The Results cog hands over the Cancel button of a waiting job (None on unload); see above."""
        self._queued_view = factory

    def queued_view(self, job_id: int, locale: str = i18n.DEFAULT) -> discord.ui.View:
        """The buttons of a waiting job's message (none if the Results cog has been unloaded)."""
        if self._queued_view is None:
            return discord.ui.View(timeout=None)
        return self._queued_view(job_id, locale)

    def result_view(self, job_id: int, locale: str = i18n.DEFAULT) -> discord.ui.View:
        """The buttons for a delivered job, labelled in `locale` (none if the Results cog has been unloaded)."""
        if self._result_view is None:
            return discord.ui.View(timeout=None)
        return self._result_view(job_id, locale)

    async def setup_hook(self) -> None:
        await self.tree.set_translator(CatalogueTranslator())  # before any sync: localisations go with it
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if not self._serve:
            return
        if self._result_view is None:
            raise RuntimeError("no result buttons: the cogs.results extension registers them when it loads")
        if self.settings.metrics_port is not None:  # first: the probes answer while the store migrates
            await self._start_ops_server(self.settings.metrics_port)
        self.pipeline = await Pipeline.open(
            self.settings,
            DiscordDelivery(self, self.result_view, utcnow=self._wall_clock, queued_view=self.queued_view),
            wall_clock=self._wall_clock,
            metrics=self.metrics,
        )
        if self.settings.syncs_commands:
            await self.sync_commands()
        else:
            log.info("not syncing commands: the process that runs shard 0 does")
        await self.pipeline.service.start()  # resumes every unfinished job from the store

    async def _start_ops_server(self, port: int) -> None:
        readiness = Readiness(self.gateway_status, lambda: self.pipeline)
        server = OpsServer(self.metrics, readiness, host=self.settings.metrics_host, port=port)
        await server.start()
        self.ops_server = server
        self._loop_lag.start()

    def gateway_status(self) -> tuple[bool, str]:
        """Readiness of the Discord side: every shard of this process connected."""
        if self.settings.pure_worker:
            return True, "a pure worker: no gateway connection to hold"
        if not self.is_ready() or self.is_closed():
            return False, "not connected to Discord (starting, or stopped)"
        shards = self.shards
        closed = sorted(shard_id for shard_id, shard in shards.items() if shard.is_closed())
        if closed:
            return False, f"shard(s) {', '.join(map(str, closed))} disconnected (reconnecting)"
        return True, f"connected: shard(s) {', '.join(map(str, sorted(shards)))}"

    async def sync_commands(self, *, force: bool = False) -> bool:
        """Sync to DEV_GUILD_ID at start, else globally only when the definitions changed."""
        if self.settings.dev_guild_id and not force:
            guild = discord.Object(self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
            log.info("commands synced to the development server %s", self.settings.dev_guild_id)
            return True
        assert self.pipeline is not None
        digest = await commands_digest(self.tree)
        if not force and await self.pipeline.store.get_meta(COMMANDS_DIGEST_KEY) == digest:
            log.info("commands unchanged since the last sync; not syncing")
            return False
        await self.tree.sync()
        await self.pipeline.store.set_meta(COMMANDS_DIGEST_KEY, digest)
        log.info("commands synced globally (Discord may take up to an hour to show changes)")
        return True

    async def connect(self, *, reconnect: bool = True) -> None:
        """Connect this process's shards; a pure worker connects none and waits to be closed
        (setup_hook, run by login, has started the pipeline: it claims, runs and delivers jobs)."""
        if self.settings.pure_worker:
            log.info("pure worker (SHARD_IDS=none): no gateway connection; running jobs from the shared queue")
            await self._closed.wait()
            return
        log.info("connecting %s", describe_shards(self.settings))
        await super().connect(reconnect=reconnect)

    async def launch_shards(self) -> None:
        if self.shard_count is None and self.settings.discord_gateway_url:
            # discord.py would connect to the URL named by GET /gateway/bot; a gateway proxy
            # (DISCORD_GATEWAY_URL, already the default gateway) must stay in between: take only the count
            self.shard_count, _url, _limits = await self.http.get_bot_gateway()
        await super().launch_shards()

    def shard_of(self, guild_id: int | None) -> int:
        """The shard a guild's events arrive on (DMs: shard 0)."""
        if guild_id is None or not self.shard_count:
            return 0
        return (guild_id >> 22) % self.shard_count

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        shard = self.shard_of(interaction.guild_id)
        self.metrics.interaction(shard, *interaction_labels(interaction))
        log.debug(
            "interaction %s from %s on shard %d",
            interaction.id,
            f"guild {interaction.guild_id}" if interaction.guild_id else "a DM",
            shard,
        )

    async def on_ready(self) -> None:
        log.info("connected as %s in %d server(s), %s", self.user, len(self.guilds), describe_shards(self.settings))

    def force_stop(self) -> None:
        """A second signal: abandon requests in flight instead of waiting for them."""
        if self.pipeline is not None:
            self.pipeline.service.force_stop()

    async def close(self) -> None:
        try:
            if self.pipeline is not None and not self._closing:
                self._closing = True
                log.info(
                    "stopping: requests already sent upstream finish (a second signal forces); deliveries get %g s",
                    self.settings.shutdown_grace_s,
                )
                # new requests are refused ("restarting") while running ones finish and deliver
                await self.pipeline.close()
        finally:
            try:
                await super().close()
            finally:
                # last: /readyz says "stopping" while requests finish, and /livez answers until the end
                await self._loop_lag.stop()
                if self.ops_server is not None:
                    await self.ops_server.stop()
                self._closed.set()


async def commands_digest(tree: discord.app_commands.CommandTree) -> str:
    """What was synced, translations included: a changed translation is a reason to sync again."""
    translator = tree.translator
    if translator is None:
        payload = [command.to_dict(tree) for command in tree.get_commands()]
    else:
        payload = [await command.get_translated_payload(tree, translator) for command in tree.get_commands()]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


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
            await store.set_meta(COMMANDS_DIGEST_KEY, await commands_digest(bot.tree))
    finally:
        await store.close()
    print(f"synced {len(synced)} command(s) globally: " + ", ".join(f"/{c.name}" for c in synced))
    return 0
