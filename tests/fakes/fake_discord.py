"""A loopback fake of Discord that the real, unmodified discord.py client talks to.

REST under ``/api/v10`` and the gateway websocket at ``/gateway``, on 127.0.0.1 in a thread and
event loop of its own (``LoopbackServer``). Tests push interactions (``send_slash``, ``click``...)
and inspect what the bot did (``messages``, ``requests``, ``original_message``...); every public
method is thread-safe. See /work/shared/docs/discord-wire.md for the wire traps it respects.

    fake = FakeDiscord().start()
    restore = fake.point_discord_py_here()      # Route.BASE and DEFAULT_GATEWAY, process-global
    task = asyncio.create_task(bot.start(fake.bot_token))
    await fake.wait_ready()
    sent = fake.send_slash("imagine", {"prompt": "a cat"})
    msg = await fake.wait_for(lambda f: f.original_message(sent.id))

Sharding: a bot that identifies with ``shard: [id, count]`` (an ``AutoShardedClient``, or one
process per shard) gets only that shard's guilds, and each guild's interactions go to its shard's
session; ``sessions`` shows what each session was sent, ``FakeGuild.on_shard`` makes a guild on a
given shard.

Standalone (benchmarks): ``python -m tests.fakes.fake_discord [--port 0] [--guilds 1]`` prints
``FAKE_DISCORD <api_base> <gateway_url>`` and serves until SIGTERM; push interactions with
``POST /_control/slash`` / ``/_control/click`` and read ``GET /_control/messages`` / ``/_control/state``
(which lists the guilds' ids: ``--guilds N`` announces N guilds to the bot instead of one).
For one bot process per shard: ``--shard-count N`` spreads those guilds over N shards (round robin),
and ``GET /_control/sessions`` lists each gateway session's shard, readiness and what it was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import inspect
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from tests.fakes.fake_discord_control import ControlRoutes
from tests.fakes.fake_discord_gateway import GatewayConn, GatewayMixin, GatewaySession, SessionRecord
from tests.fakes.fake_discord_models import (
    ATTACHMENT_SIZE_LIMIT,
    DEFAULT_PERMISSIONS,
    UNSET,
    FakeGuild,
    FakeMessage,
    FakeRequest,
    InteractionRecord,
    SentInteraction,
    build_options,
    dm_channel_payload,
    guild_channel_payload,
    guild_create_payload,
    iso,
    json_response,
    member_payload,
    new_snowflake,
    random_token,
    shard_of,
    user_payload,
    walk_components,
)
from tests.fakes.fake_discord_rest import RestRoutes, Rule
from tests.fakes.loopback import LoopbackServer

__all__ = [
    "DEFAULT_PERMISSIONS",
    "FakeDiscord",
    "FakeGuild",
    "FakeMessage",
    "FakeRequest",
    "SentInteraction",
    "SessionRecord",
    "shard_of",
]

T = TypeVar("T")


class FakeDiscord(RestRoutes, GatewayMixin, ControlRoutes):
    def __init__(
        self,
        bot_token: str = "fake-bot-token",
        application_id: int | None = None,
        bot_user_id: int | None = None,
        guilds: Sequence[FakeGuild] | None = None,
        *,
        bot_username: str = "imagine-bot",
        default_user_id: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        callback_timeout: float | None = None,
        max_recorded_requests: int | None = None,
        attachment_size_limit: int = ATTACHMENT_SIZE_LIMIT,
    ) -> None:
        self._ids = new_snowflake
        # Discord's default per message; boosted servers allow more (the interaction says how much)
        self.attachment_size_limit = attachment_size_limit
        self.bot_token = bot_token
        self.application_id = application_id or self._ids()
        self.bot_user_id = bot_user_id or self.application_id
        self.owner_user_id = self._ids()
        self.default_user_id = default_user_id or self._ids()
        self.callback_timeout = callback_timeout  # seconds to answer a callback (Discord: 3), None = any
        self._bot_user = user_payload(self.bot_user_id, bot_username, bot=True)
        self._lock = threading.RLock()
        self._guilds: dict[int, FakeGuild] = {}
        self._channels: dict[int, dict[str, Any]] = {}  # id -> {"guild_id", "payload"}
        self._dm_channels: dict[int, int] = {}  # user id -> channel id
        self._messages: dict[int, FakeMessage] = {}
        self._interactions: dict[int, InteractionRecord] = {}
        self._tokens: dict[str, int] = {}
        self._requests: deque[FakeRequest] = deque(maxlen=max_recorded_requests)
        self._rules: list[Rule] = []
        self._nonces: dict[tuple[int, str], tuple[int, float]] = {}
        self._commands: dict[int | None, list[dict[str, Any]]] = {}
        self._command_ids: dict[tuple[Any, ...], int] = {}
        self._made_up_command_ids: dict[str, int] = {}
        self._sync_count = 0
        self._identify_count = 0
        self._resume_count = 0
        self._identifies: list[dict[str, Any]] = []
        self._gateway_connections = 0
        self._sessions: dict[str, GatewaySession] = {}
        self._conns: set[GatewayConn] = set()
        for guild in [FakeGuild()] if guilds is None else guilds:
            self.add_guild(guild)
        app = web.Application(middlewares=[self._api_middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        self._add_rest_routes(app)
        self._add_control_routes(app)
        app.on_shutdown.append(lambda _app: self._close_all())
        self._server = LoopbackServer(app, host=host, port=port)
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeDiscord:
        self._server.start()
        self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            self._started = False
            self._server.stop()

    def __enter__(self) -> FakeDiscord:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/gateway"

    def point_discord_py_here(self) -> Callable[[], None]:
        """Point discord.py (process-global) at this fake; returns a callable restoring the old values."""
        import discord.gateway
        import discord.http
        import yarl

        old_base, old_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)

        def restore() -> None:
            discord.http.Route.BASE = old_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

        return restore

    # -- guilds and channels -----------------------------------------------------------------
    def add_guild(self, guild: FakeGuild | None = None, **kwargs: Any) -> FakeGuild:
        """Add a guild: announced in READY/GUILD_CREATE, or as a GUILD_CREATE to a connected bot."""
        guild = guild or FakeGuild(**kwargs)
        with self._lock:
            self._guilds[guild.id] = guild
            for cid in guild.channel_ids:
                self._channels[cid] = {"guild_id": guild.id, "payload": guild_channel_payload(guild, cid)}
        if getattr(self, "_started", False) and self._has_ready_session_for(guild.id):  # its shard's bot
            self._push_event("GUILD_CREATE", guild_create_payload(guild, self._bot_user, time.time()))
        return guild

    def set_guild_locale(self, guild_id: int, locale: str) -> None:
        """The server's preferred language (Server Settings > Community), seen in later interactions."""
        with self._lock:
            self._guilds[guild_id].preferred_locale = locale

    @property
    def guilds(self) -> list[FakeGuild]:
        with self._lock:
            return copy.deepcopy(list(self._guilds.values()))

    @property
    def guild_id(self) -> int:
        """The first guild's id."""
        with self._lock:
            return next(iter(self._guilds))

    @property
    def channel_id(self) -> int:
        """The first guild's first channel."""
        with self._lock:
            return next(iter(self._guilds.values())).channel_ids[0]

    def dm_channel_id(self, user_id: int) -> int:
        with self._lock:
            return self._dm_channel(user_id, None)

    def _dm_channel(self, user_id: int, user: dict[str, Any] | None) -> int:
        if user_id not in self._dm_channels:
            cid = self._ids()
            self._dm_channels[user_id] = cid
            payload = dm_channel_payload(cid, user or user_payload(user_id))
            self._channels[cid] = {"guild_id": None, "payload": payload}
        return self._dm_channels[user_id]

    # -- pushing interactions ----------------------------------------------------------------
    def send_slash(
        self,
        name: str,
        options: dict[str, Any] | list[dict[str, Any]] | None = None,
        *,
        guild_id: int | None = None,
        channel_id: int | None = None,
        user_id: int | None = None,
        roles: Sequence[int] = (),
        permissions: str = DEFAULT_PERMISSIONS,
        subcommand_group: str | None = None,
        subcommand: str | None = None,
        username: str | None = None,
        locale: str = "en-US",
        resolved: dict[str, Any] | None = None,
        command_guild_id: int | None = UNSET,
    ) -> SentInteraction:
        """Push an APPLICATION_COMMAND interaction in a guild (default: the first guild and channel).

        ``options`` values map to option types (str 3, int 4, bool 5, float 10); a dict value is a
        raw option. ``data.guild_id`` (which discord.py uses to pick guild commands) is set when the
        command was synced to that guild, or when ``command_guild_id`` is given.
        """
        sent = self._prepare_slash(
            name,
            options,
            guild_id=guild_id if guild_id is not None else self.guild_id,
            channel_id=channel_id,
            user_id=user_id,
            roles=roles,
            permissions=permissions,
            subcommand_group=subcommand_group,
            subcommand=subcommand,
            username=username,
            locale=locale,
            resolved=resolved,
            command_guild_id=command_guild_id,
        )
        self._push_event("INTERACTION_CREATE", sent.payload)
        return sent

    def send_dm_slash(
        self,
        name: str,
        options: dict[str, Any] | list[dict[str, Any]] | None = None,
        *,
        user_id: int | None = None,
        subcommand_group: str | None = None,
        subcommand: str | None = None,
        username: str | None = None,
        locale: str = "en-US",
        resolved: dict[str, Any] | None = None,
    ) -> SentInteraction:
        """Push an APPLICATION_COMMAND interaction from the bot's DM with ``user_id``."""
        sent = self._prepare_slash(
            name,
            options,
            guild_id=None,
            channel_id=None,
            user_id=user_id,
            roles=(),
            permissions=None,
            subcommand_group=subcommand_group,
            subcommand=subcommand,
            username=username,
            locale=locale,
            resolved=resolved,
            command_guild_id=None,
        )
        self._push_event("INTERACTION_CREATE", sent.payload)
        return sent

    def send_autocomplete(
        self,
        name: str,
        options: dict[str, Any],
        focused: str,
        *,
        guild_id: int | None = None,
        channel_id: int | None = None,
        user_id: int | None = None,
        locale: str = "en-US",
    ) -> SentInteraction:
        """Push an APPLICATION_COMMAND_AUTOCOMPLETE (type 4) while the user types option ``focused``:
        ``options`` are what is filled in so far (all strings here). The bot answers with callback 8,
        whose choices ``callback_payloads`` returns."""
        opts = [
            {"name": n, "type": 3, "value": v, **({"focused": True} if n == focused else {})}
            for n, v in options.items()
        ]
        with self._lock:
            gid = guild_id if guild_id is not None else self.guild_id
            synced = [c for c in self._commands.get(None, []) if c["name"] == name]
            cmd_id = int(synced[0]["id"]) if synced else self._made_up_command_ids.setdefault(name, self._ids())
            data = {"id": str(cmd_id), "name": name, "type": 1, "options": opts}
            sent = self._prepare_interaction(
                4,
                data,
                name,
                guild_id=gid,
                channel_id=channel_id,
                user_id=user_id,
                username=None,
                roles=(),
                permissions=None,
                locale=locale,
                message=None,
            )
        self._push_event("INTERACTION_CREATE", sent.payload)
        return sent

    def click(
        self,
        message_id: int,
        custom_id: str,
        *,
        user_id: int | None = None,
        guild_id: int | None = UNSET,
        channel_id: int | None = None,
        roles: Sequence[int] = (),
        permissions: str = DEFAULT_PERMISSIONS,
        username: str | None = None,
        locale: str = "en-US",
        component_type: int = 2,
        values: Sequence[str] | None = None,
    ) -> SentInteraction:
        """Push a MESSAGE_COMPONENT interaction for a component of a stored message."""
        sent = self._prepare_click(
            message_id,
            custom_id,
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            roles=roles,
            permissions=permissions,
            username=username,
            locale=locale,
            component_type=component_type,
            values=values,
        )
        self._push_event("INTERACTION_CREATE", sent.payload)
        return sent

    def submit_modal(
        self,
        custom_id: str,
        values: dict[str, str],
        *,
        message_id: int | None = None,
        user_id: int | None = None,
        guild_id: int | None = UNSET,
        channel_id: int | None = None,
        roles: Sequence[int] = (),
        permissions: str = DEFAULT_PERMISSIONS,
    ) -> SentInteraction:
        """Push a MODAL_SUBMIT with text inputs ``{custom_id: value}`` (each in its own action row)."""
        rows = [{"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]} for k, v in values.items()]
        data = {"custom_id": custom_id, "components": rows}
        with self._lock:
            message = self._messages.get(message_id) if message_id else None
            if guild_id is UNSET:
                guild_id = message.guild_id if message else self.guild_id
            channel_id = channel_id or (message.channel_id if message else None)
            sent = self._prepare_interaction(
                5,
                data,
                custom_id,
                guild_id=guild_id,
                channel_id=channel_id,
                user_id=user_id,
                username=None,
                roles=roles,
                permissions=permissions,
                locale="en-US",
                message=self._msg_json(message) if message else None,
            )
            if message is not None:
                self._interactions[sent.id].source_message_id = message.id
        self._push_event("INTERACTION_CREATE", sent.payload)
        return sent

    def send_message_command(
        self,
        name: str,
        content: str,
        *,
        author_id: int,
        mentions: Sequence[int] = (),
        attachments: Sequence[str] = (),
        guild_id: int | None = None,
        channel_id: int | None = None,
        user_id: int | None = None,
        permissions: str = DEFAULT_PERMISSIONS,
        locale: str = "en-US",
    ) -> SentInteraction:
        """Push a message context-menu command (APPLICATION_COMMAND, data.type 3) used on a message
        written by ``author_id``: Discord sends the message itself in ``data.resolved.messages``
        (so no message-content intent is needed), with ``mentions`` as user objects and
        ``attachments`` (file names) as attachment objects."""
        with self._lock:
            gid = guild_id if guild_id is not None else self.guild_id
            cid = channel_id or self._guilds[gid].channel_ids[0]
            target_id = self._ids()
            message = {
                "id": str(target_id),
                "channel_id": str(cid),
                "author": user_payload(author_id),
                "content": content,
                "timestamp": iso(time.time()),
                "edited_timestamp": None,
                "tts": False,
                "mention_everyone": "@everyone" in content,
                "mentions": [user_payload(m) for m in mentions],
                "mention_roles": [],
                "attachments": [
                    {"id": str(self._ids()), "filename": f, "size": 1, "url": f"{self.url}/f/{f}", "proxy_url": ""}
                    for f in attachments
                ],
                "embeds": [],
                "pinned": False,
                "type": 0,
                "flags": 0,
                "components": [],
            }
            synced = [c for c in self._commands.get(None, []) if c["name"] == name and c.get("type") == 3]
            cmd_id = int(synced[0]["id"]) if synced else self._made_up_command_ids.setdefault(name, self._ids())
            data = {
                "id": str(cmd_id),
                "name": name,
                "type": 3,
                "target_id": str(target_id),
                "resolved": {"messages": {str(target_id): message}},
            }
            sent = self._prepare_interaction(
                2,
                data,
                name,
                guild_id=gid,
                channel_id=cid,
                user_id=user_id,
                username=None,
                roles=(),
                permissions=permissions,
                locale=locale,
                message=None,
            )
        self._push_event("INTERACTION_CREATE", sent.payload)
        return sent

    def _prepare_slash(self, name: str, options: Any, *, command_guild_id: Any, resolved: Any, **kw: Any):
        opts = build_options(options, kw.pop("subcommand_group"), kw.pop("subcommand"))
        with self._lock:
            gid = kw["guild_id"]
            in_guild = gid is not None and any(c["name"] == name for c in self._commands.get(gid, []))
            scope = gid if (command_guild_id is UNSET and in_guild) else command_guild_id
            scope = None if scope is UNSET else scope
            synced = [c for c in self._commands.get(scope, []) if c["name"] == name and c.get("type", 1) == 1]
            cmd_id = int(synced[0]["id"]) if synced else self._made_up_command_ids.setdefault(name, self._ids())
            data: dict[str, Any] = {"id": str(cmd_id), "name": name, "type": 1}
            if opts:
                data["options"] = opts
            if resolved:
                data["resolved"] = resolved
            if scope is not None:
                data["guild_id"] = str(scope)
            return self._prepare_interaction(2, data, name, message=None, **kw)

    def _prepare_click(self, message_id: int, custom_id: str, *, guild_id: Any, values: Any, **kw: Any):
        component_type = kw.pop("component_type")
        with self._lock:
            message = self._messages.get(message_id)
            if message is None or message.deleted:
                raise ValueError(f"no message {message_id} to click on (deleted: {bool(message)})")
            if custom_id not in message.custom_ids():
                raise ValueError(f"message {message_id} has no component {custom_id!r}: {message.custom_ids()}")
            data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
            if values is not None or component_type in (3, 5, 6, 7, 8):
                data["values"] = list(values or [])
            comp = next(c for c in walk_components(message.components) if c.get("custom_id") == custom_id)
            if "id" in comp:
                data["id"] = comp["id"]
            gid = message.guild_id if guild_id is UNSET else guild_id
            kw["channel_id"] = kw["channel_id"] or message.channel_id
            sent = self._prepare_interaction(3, data, custom_id, guild_id=gid, message=self._msg_json(message), **kw)
            self._interactions[sent.id].source_message_id = message.id
            return sent

    def _prepare_interaction(
        self,
        itype: int,
        data: dict[str, Any],
        name: str,
        *,
        guild_id: int | None,
        channel_id: int | None,
        user_id: int | None,
        username: str | None,
        roles: Sequence[int],
        permissions: str | None,
        locale: str,
        message: dict[str, Any] | None,
    ) -> SentInteraction:
        iid, token = self._ids(), random_token()
        user_id = user_id or self.default_user_id
        user = user_payload(user_id, username)
        payload: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(self.application_id),
            "type": itype,
            "data": data,
            "token": token,
            "version": 1,
            "locale": locale,
            "entitlements": [],
            "attachment_size_limit": self.attachment_size_limit,
            "app_permissions": DEFAULT_PERMISSIONS,
        }
        with self._lock:
            if guild_id is not None:
                guild = self._guilds.get(guild_id)
                if guild is None:
                    raise ValueError(f"unknown guild {guild_id}; known: {list(self._guilds)}")
                channel_id = channel_id or guild.channel_ids[0]
                if channel_id not in guild.channel_ids:
                    raise ValueError(f"channel {channel_id} is not in guild {guild_id}: {guild.channel_ids}")
                perms = permissions or DEFAULT_PERMISSIONS
                payload.update(
                    guild_id=str(guild_id),
                    guild={"id": str(guild_id), "locale": guild.preferred_locale, "features": []},
                    guild_locale=guild.preferred_locale,
                    channel_id=str(channel_id),
                    channel={**guild_channel_payload(guild, channel_id), "permissions": perms},
                    member=member_payload(user, roles, perms, time.time() - 86400),
                    authorizing_integration_owners={"0": str(guild_id)},
                    context=0,
                )
            else:
                channel_id = self._dm_channel(user_id, user)
                payload.update(
                    channel_id=str(channel_id),
                    channel=self._channels[channel_id]["payload"],
                    user=user,
                    authorizing_integration_owners={"0": "0"},
                    context=1,
                )
            if message is not None:
                payload["message"] = message
            self._interactions[iid] = InteractionRecord(iid, token, itype, guild_id, channel_id, user, name)
            self._tokens[token] = iid
        return SentInteraction(iid, token, itype, guild_id, channel_id, user_id, payload)

    def _push_event(self, event: str, data: Any) -> None:
        if threading.current_thread() is self._server._thread:
            raise RuntimeError("use `await fake._push_async(...)` on the fake's own loop")
        asyncio.run_coroutine_threadsafe(self._push_async(event, data), self._server.loop).result(10)

    def push_event(self, event: str, data: Any) -> None:
        """Dispatch any gateway event (``t``/``d``) to the connected bot."""
        self._push_event(event, data)

    def disconnect_bot(self, code: int = 4000) -> None:
        """Close the bot's gateway websocket (it reconnects and RESUMEs; 4004 and co. are fatal)."""
        self._server.call(self._disconnect_current, code)

    def expire_token(self, interaction_id: int) -> None:
        """Make an interaction's token invalid, as Discord does after 15 minutes."""
        with self._lock:
            self._interactions[interaction_id].expired = True

    # -- scripted failures -------------------------------------------------------------------
    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int = 500,
        times: int = 1,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next ``times`` matching REST requests with ``status`` (429s carry ``Via`` and
        ``retry_after`` so discord.py retries them). ``path_regex`` is searched in the path after
        /api/v10, e.g. ``r"/webhooks/.*/messages/@original"``; method ``"*"`` matches any."""
        rule = Rule("fail", method.upper(), re.compile(path_regex), status, times, retry_after, body)
        with self._lock:
            self._rules.append(rule)

    def drop_next(self, method: str, path_regex: str, times: int = 1) -> None:
        """Close the connection of the next ``times`` matching REST requests without answering."""
        with self._lock:
            self._rules.append(Rule("drop", method.upper(), re.compile(path_regex), 0, times, None, None))

    def clear_failures(self) -> None:
        with self._lock:
            self._rules.clear()

    # -- inspection (copies) -----------------------------------------------------------------
    @property
    def requests(self) -> list[FakeRequest]:
        with self._lock:
            return copy.deepcopy(list(self._requests))

    def requests_to(self, method: str, path_regex: str) -> list[FakeRequest]:
        pattern = re.compile(path_regex)
        return [r for r in self.requests if method.upper() in ("*", r.method) and pattern.search(r.path)]

    @property
    def unexpected_requests(self) -> list[FakeRequest]:
        return [r for r in self.requests if r.unexpected]

    @property
    def messages(self) -> dict[int, FakeMessage]:
        with self._lock:
            return copy.deepcopy(self._messages)

    def message(self, message_id: int) -> FakeMessage | None:
        with self._lock:
            return copy.deepcopy(self._messages.get(message_id))

    def channel_messages(self, channel_id: int, *, include_deleted: bool = False) -> list[FakeMessage]:
        with self._lock:
            found = [m for m in self._messages.values() if m.channel_id == channel_id]
            return copy.deepcopy([m for m in found if include_deleted or not m.deleted])

    def interaction(self, interaction_id: int) -> InteractionRecord:
        with self._lock:
            return copy.deepcopy(self._interactions[interaction_id])

    def original_message(self, interaction_id: int) -> FakeMessage | None:
        """The interaction's original response (None until a callback created or chose one)."""
        with self._lock:
            rec = self._interactions.get(interaction_id)
            return copy.deepcopy(self._messages.get(rec.original_id)) if rec and rec.original_id else None

    def followups(self, interaction_id: int) -> list[FakeMessage]:
        with self._lock:
            rec = self._interactions[interaction_id]
            return copy.deepcopy([self._messages[m] for m in rec.followup_ids])

    def callbacks(self, interaction_id: int) -> list[int]:
        """Callback types the bot sent for the interaction (4 message, 5 defer, 6, 7, 9 modal...)."""
        with self._lock:
            return list(self._interactions[interaction_id].callbacks)

    def callback_payloads(self, interaction_id: int) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._interactions[interaction_id].responses)

    def synced_commands(self, guild_id: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._commands.get(guild_id, []))

    @property
    def sync_count(self) -> int:
        with self._lock:
            return self._sync_count

    @property
    def identify_count(self) -> int:
        with self._lock:
            return self._identify_count

    @property
    def resume_count(self) -> int:
        with self._lock:
            return self._resume_count

    @property
    def gateway_connections(self) -> int:
        """Websocket connections ever opened to the gateway (a bot that never connects: 0)."""
        with self._lock:
            return self._gateway_connections

    @property
    def sessions(self) -> list[SessionRecord]:
        """Every gateway session, oldest first: its shard, the guilds announced to it and the
        interactions dispatched to it."""
        return self._session_records()

    @property
    def ready_shards(self) -> set[tuple[int, int]]:
        """(shard id, shard count) of every connected session that has had READY and its guilds
        ((0, 1) for an unsharded one)."""
        return {s.shard or (0, 1) for s in self.sessions if s.ready and s.connected and not s.replaced}

    @property
    def identify_payloads(self) -> list[dict[str, Any]]:
        """IDENTIFY payloads received (token removed): intents, properties, shard..."""
        with self._lock:
            return copy.deepcopy(self._identifies)

    # -- waiting -----------------------------------------------------------------------------
    async def wait_for(
        self,
        predicate: Callable[[FakeDiscord], T | None | bool],
        timeout: float = 10.0,
        interval: float = 0.02,
    ) -> T:
        """Poll ``predicate(fake)`` until it returns something truthy, and return that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate(self)
            if result:
                return result  # type: ignore[return-value]
            if loop.time() >= deadline:
                raise AssertionError(self._timeout_report(predicate, timeout))
            await asyncio.sleep(interval)

    def wait_for_sync(
        self,
        predicate: Callable[[FakeDiscord], T | None | bool],
        timeout: float = 10.0,
        interval: float = 0.02,
    ) -> T:
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self)
            if result:
                return result  # type: ignore[return-value]
            if time.monotonic() >= deadline:
                raise AssertionError(self._timeout_report(predicate, timeout))
            time.sleep(interval)

    async def wait_ready(self, timeout: float = 10.0, *, min_identifies: int = 1) -> None:
        """Wait until a bot has identified (``min_identifies`` times in all) and got every GUILD_CREATE."""
        await self.wait_for(lambda f: f._has_ready_bot(min_identifies), timeout)

    def wait_ready_sync(self, timeout: float = 10.0, *, min_identifies: int = 1) -> None:
        self.wait_for_sync(lambda f: f._has_ready_bot(min_identifies), timeout)

    def _timeout_report(self, predicate: Callable[..., Any], timeout: float) -> str:
        try:
            what = inspect.getsource(predicate).strip()
        except (OSError, TypeError):
            what = repr(predicate)
        with self._lock:
            connected = sum(1 for s in self._sessions.values() if s.conn is not None)
            reqs = [f"  {r.method} {r.path} -> {r.status}" for r in list(self._requests)[-15:]]
            msgs = [
                f"  {m.id} ch={m.channel_id} flags={m.flags} deleted={m.deleted} content={m.content[:60]!r}"
                for m in list(self._messages.values())[-8:]
            ]
            shards = sorted(s.shard_key for s in self._sessions.values() if s.conn is not None)
            counts = f"identify_count={self._identify_count} connected_sessions={connected} shards={shards}"
        return "\n".join(
            [f"fake discord: timed out after {timeout}s waiting for: {what}", counts, "last requests:", *reqs]
            + ["last messages:", *msgs]
        )


class StandaloneFakeDiscord(FakeDiscord):
    """The standalone fake (``main``): one more control route, ``GET /_control/sessions``."""

    def _add_control_routes(self, app: web.Application) -> None:
        super()._add_control_routes(app)
        app.router.add_get("/_control/sessions", self._control_sessions)

    async def _control_sessions(self, request: web.Request) -> web.Response:
        """Every gateway session, oldest first: its shard ([id, count], null when unsharded), whether
        it is connected, ready (READY and its guilds sent) and superseded, its guilds' ids and how
        many interactions it was sent."""
        out = [
            {
                "session_id": s.session_id,
                "shard": list(s.shard) if s.shard else None,
                "connected": s.connected,
                "ready": s.ready,
                "replaced": s.replaced,
                "guild_ids": [str(g) for g in s.guild_ids],
                "interactions": len(s.interaction_ids),
            }
            for s in self.sessions
        ]
        return json_response(out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Loopback fake Discord (REST + gateway) for benchmarks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default="fake-bot-token")
    parser.add_argument("--application-id", type=int, default=None)
    parser.add_argument("--max-recorded-requests", type=int, default=10000)
    parser.add_argument("--guilds", type=int, default=1, help="how many guilds the bot is in (each with 2 channels)")
    parser.add_argument(
        "--shard-count", type=int, default=None, help="spread the guilds over this many shards (round robin)"
    )
    args = parser.parse_args(argv)

    def guild(n: int) -> FakeGuild:
        name = "Fake Guild" if n == 0 else f"Fake Guild {n + 1}"
        if args.shard_count:
            return FakeGuild.on_shard(n % args.shard_count, args.shard_count, name=name)
        return FakeGuild(name=name)

    fake = StandaloneFakeDiscord(
        args.token,
        args.application_id,
        guilds=[guild(n) for n in range(max(1, args.guilds))],
        host=args.host,
        port=args.port,
        max_recorded_requests=args.max_recorded_requests,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    fake.start()
    print(f"FAKE_DISCORD {fake.api_base} {fake.gateway_url}", flush=True)
    stop.wait()
    fake.stop()


if __name__ == "__main__":
    main()
