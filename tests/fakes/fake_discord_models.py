"""Data model and payload builders of the loopback fake Discord (see ``fake_discord.py``).

Everything here is plain data: the shapes discord.py 2.7 expects on the wire (users, members,
channels, guilds, messages, interactions) and the records tests inspect.
"""

from __future__ import annotations

import datetime as dt
import json
import mimetypes
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DISCORD_EPOCH_MS = 1420070400000
DEFAULT_PERMISSIONS = "2248473465835073"  # everything but administrator
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024
EPHEMERAL = 1 << 6
LOADING = 1 << 7
SUPPRESS_EMBEDS = 1 << 2
UNSET: Any = object()  # "argument not given" where None means something

ERRORS: dict[str, tuple[int, dict[str, Any]]] = {
    "unauthorized": (401, {"message": "401: Unauthorized", "code": 0}),
    "not_found": (404, {"message": "404: Not Found", "code": 0}),
    "invalid_webhook_token": (401, {"message": "Invalid Webhook Token", "code": 50027}),
    "unknown_interaction": (404, {"message": "Unknown interaction", "code": 10062}),
    "already_acknowledged": (400, {"message": "Interaction has already been acknowledged.", "code": 40060}),
    "unknown_message": (404, {"message": "Unknown Message", "code": 10008}),
    "unknown_channel": (404, {"message": "Unknown Channel", "code": 10003}),
    "unknown_webhook": (404, {"message": "Unknown Webhook", "code": 10015}),
    "missing_access": (403, {"message": "Missing Access", "code": 50001}),
    "empty_message": (400, {"message": "Cannot send an empty message", "code": 50006}),
    "too_large": (413, {"message": "Request entity too large", "code": 40005}),
}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer whose Content-Type is exactly ``application/json`` (discord.py needs that)."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def error_response(kind: str, **extra: Any) -> web.Response:
    status, body = ERRORS[kind]
    return json_response({**body, **extra}, status)


def invalid_form(path: str, code: str, message: str) -> web.Response:
    """400 Invalid Form Body with Discord's nested error shape, e.g. path ``content``."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(path.split(".")):
        errors = {part: errors}
    return json_response({"message": "Invalid Form Body", "code": 50035, "errors": errors}, 400)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


class SnowflakeGenerator:
    """Increasing snowflake ids whose timestamp part is now (``discord.utils.snowflake_time`` works)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
            self._last = max(candidate, self._last + 1)
            return self._last

    def on_shard(self, shard_id: int, shard_count: int) -> int:
        """A new id whose guild lives on this shard (its timestamp moved at most shard_count-1 ms ahead)."""
        with self._lock:
            candidate = max((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22, self._last + 1)
            stamp = candidate >> 22
            ahead = (shard_id - stamp) % shard_count
            if ahead:
                candidate = (stamp + ahead) << 22
            self._last = candidate
            return candidate


new_snowflake = SnowflakeGenerator()  # one per process, so guild, channel and message ids never collide


def shard_of(guild_id: int | None, shard_count: int) -> int:
    """Discord's rule: a guild's events go to shard (guild_id >> 22) % shard_count; DMs to shard 0."""
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


# -- records ---------------------------------------------------------------------------------
@dataclass
class FakeGuild:
    id: int = 0
    name: str = "Fake Guild"
    channel_ids: list[int] = field(default_factory=list)
    roles: list[int | dict[str, Any]] = field(default_factory=list)  # ids (named role-<id>) or payloads
    owner_id: int | None = None
    channel_names: dict[int, str] = field(default_factory=dict)
    preferred_locale: str = "en-US"  # the server's language: interactions carry it as guild_locale
    #: the bot's server-wide permissions here, as GET /users/@me/guilds reports them
    bot_permissions: str = DEFAULT_PERMISSIONS

    def __post_init__(self) -> None:
        self.id = self.id or new_snowflake()
        if not self.channel_ids:
            self.channel_ids = [new_snowflake(), new_snowflake()]

    @classmethod
    def on_shard(cls, shard_id: int, shard_count: int, **kwargs: Any) -> FakeGuild:
        """A guild whose events Discord sends to shard ``shard_id`` of ``shard_count``."""
        return cls(id=new_snowflake.on_shard(shard_id, shard_count), **kwargs)


@dataclass
class FakeRequest:
    method: str
    path: str  # relative to /api/v10, e.g. /channels/1/messages
    query: dict[str, str]
    json: Any
    files: dict[str, bytes]
    headers: dict[str, str]  # without Authorization
    authorization: bool  # an Authorization header was present
    at: float
    status: int | None = None  # 0 when the connection was dropped
    scripted: bool = False  # answered by fail_next/drop_next
    unexpected: bool = False  # no such route in the fake


@dataclass
class FakeMessage:
    id: int
    channel_id: int
    guild_id: int | None
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[dict[str, Any]] = field(default_factory=list)  # id, filename, bytes, content_type, size
    allowed_mentions: dict[str, Any] | None = None
    flags: int = 0
    deleted: bool = False
    interaction_id: int | None = None
    webhook: bool = False  # created through an interaction (callback or followup)
    nonce: str | None = None
    type: int = 0
    created_at: float = field(default_factory=time.time)
    edited_at: float | None = None
    edits: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # every payload sent for it
    extra: dict[str, Any] = field(default_factory=dict)  # tts, message_reference, poll, stickers...

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in walk_components(self.components) if "custom_id" in c]


@dataclass
class SentInteraction:
    id: int
    token: str
    type: int
    guild_id: int | None
    channel_id: int
    user_id: int
    payload: dict[str, Any]


@dataclass
class InteractionRecord:
    id: int
    token: str
    type: int
    guild_id: int | None
    channel_id: int
    user: dict[str, Any]
    name: str | None  # command name, or custom_id for components/modals
    pushed_at: float = field(default_factory=time.time)
    expired: bool = False
    callbacks: list[int] = field(default_factory=list)
    original_id: int | None = None
    responses: list[dict[str, Any]] = field(default_factory=list)  # callback payloads as sent
    followup_ids: list[int] = field(default_factory=list)
    source_message_id: int | None = None  # the message a component was on


# -- payload builders ------------------------------------------------------------------------
def user_payload(user_id: int, username: str | None = None, *, bot: bool = False) -> dict[str, Any]:
    name = username or f"user{user_id}"
    data: dict[str, Any] = {
        "id": str(user_id),
        "username": name,
        "discriminator": "0",
        "global_name": None if bot else name,
        "avatar": None,
        "public_flags": 0,
        "flags": 0,
    }
    if bot:
        data["bot"] = True
    return data


def member_payload(user: dict[str, Any], roles: Any, permissions: str | None, joined: float) -> dict[str, Any]:
    data: dict[str, Any] = {
        "user": user,
        "roles": [str(r) for r in roles],
        "flags": 0,
        "joined_at": iso(joined),
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "pending": False,
        "nick": None,
        "avatar": None,
        "banner": None,
        "communication_disabled_until": None,
    }
    if permissions is not None:
        data["permissions"] = str(permissions)
    return data


def role_payload(role: int | dict[str, Any], guild_id: int, position: int) -> dict[str, Any]:
    if isinstance(role, dict):
        return {"position": position, "permissions": "0", **role, "id": str(role["id"])}
    return {
        "id": str(role),
        "name": "@everyone" if role == guild_id else f"role-{role}",
        "permissions": DEFAULT_PERMISSIONS if role == guild_id else "0",
        "position": 0 if role == guild_id else position,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "managed": False,
        "mentionable": False,
        "icon": None,
        "unicode_emoji": None,
        "flags": 0,
    }


def partial_guild_payload(guild: FakeGuild, bot_user_id: int) -> dict[str, Any]:
    """A guild as GET /users/@me/guilds lists it for the bot: `owner` and its `permissions`.

    `owner` only when a test made the bot the owner (`owner_id`): the GUILD_CREATE payload names
    the bot as owner by default only because discord.py needs some owner id there."""
    return {
        "id": str(guild.id),
        "name": guild.name,
        "icon": None,
        "banner": None,
        "owner": guild.owner_id == bot_user_id,
        "permissions": guild.bot_permissions,
        "features": [],
        "approximate_member_count": 2,
        "approximate_presence_count": 1,
    }


def guild_channel_payload(guild: FakeGuild, channel_id: int) -> dict[str, Any]:
    position = guild.channel_ids.index(channel_id)
    return {
        "id": str(channel_id),
        "type": 0,
        "guild_id": str(guild.id),
        "name": guild.channel_names.get(channel_id, f"channel-{position}"),
        "position": position,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": None,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "flags": 0,
    }


def dm_channel_payload(channel_id: int, user: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(channel_id), "type": 1, "recipients": [user], "last_message_id": None, "flags": 0}


def guild_create_payload(guild: FakeGuild, bot_user: dict[str, Any], joined: float) -> dict[str, Any]:
    role_ids = [guild.id, *[r for r in guild.roles if r != guild.id]]
    return {
        "id": str(guild.id),
        "name": guild.name,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "description": None,
        "owner_id": str(guild.owner_id or int(bot_user["id"])),
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": guild.preferred_locale,
        "system_channel_id": None,
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "safety_alerts_channel_id": None,
        "vanity_url_code": None,
        "roles": [role_payload(r, guild.id, i) for i, r in enumerate(role_ids)],
        "channels": [guild_channel_payload(guild, c) for c in guild.channel_ids],
        "threads": [],
        "members": [member_payload(bot_user, [], None, joined)],
        "member_count": 2,
        "large": False,
        "unavailable": False,
        "joined_at": iso(joined),
        "features": [],
        "emojis": [],
        "stickers": [],
        "voice_states": [],
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
        "premium_progress_bar_enabled": False,
        "max_members": 500000,
        "application_id": None,
        "lazy": True,
    }


def attachment_payload(att: dict[str, Any], root: str, channel_id: int) -> dict[str, Any]:
    url = f"{root}/attachments/{channel_id}/{att['id']}/{att['filename']}"
    data = {
        "id": str(att["id"]),
        "filename": att["filename"],
        "size": len(att["bytes"]),
        "url": url,
        "proxy_url": url,
        "content_type": att["content_type"],
    }
    if att.get("description") is not None:
        data["description"] = att["description"]
    return data


def message_payload(
    msg: FakeMessage,
    *,
    root: str,
    bot_user: dict[str, Any],
    application_id: int,
    interaction: InteractionRecord | None,
) -> dict[str, Any]:
    embeds = [{"type": "rich", **e} for e in msg.embeds]
    data: dict[str, Any] = {
        "id": str(msg.id),
        "channel_id": str(msg.channel_id),
        "type": msg.type,
        "content": msg.content,
        "author": bot_user,
        "embeds": embeds,
        "attachments": [attachment_payload(a, root, msg.channel_id) for a in msg.attachments],
        "components": msg.components,
        "mentions": [],
        "mention_roles": [],
        "mention_everyone": False,
        "pinned": False,
        "tts": bool(msg.extra.get("tts", False)),
        "timestamp": iso(msg.created_at),
        "edited_timestamp": iso(msg.edited_at),
        "flags": msg.flags,
    }
    if msg.guild_id is not None:
        data["guild_id"] = str(msg.guild_id)
    if msg.nonce is not None:
        data["nonce"] = msg.nonce
    if msg.webhook:
        data["webhook_id"] = str(application_id)
        data["application_id"] = str(application_id)
    if interaction is not None:
        owners = {"0": str(interaction.guild_id or 0)}
        meta: dict[str, Any] = {
            "id": str(interaction.id),
            "type": interaction.type,
            "user": interaction.user,
            "authorizing_integration_owners": owners,
        }
        if interaction.type == 2:
            meta["name"] = interaction.name
            meta["command_type"] = 1
        if msg.id != interaction.original_id and interaction.original_id is not None:
            meta["original_response_message_id"] = str(interaction.original_id)
        if interaction.source_message_id is not None:
            meta["interacted_message_id"] = str(interaction.source_message_id)
        data["interaction_metadata"] = meta
        data["interaction"] = {
            "id": str(interaction.id),
            "type": interaction.type,
            "name": interaction.name or "",
            "user": interaction.user,
        }
    if "message_reference" in msg.extra:
        data["message_reference"] = msg.extra["message_reference"]
    return data


# -- helpers ---------------------------------------------------------------------------------
def walk_components(components: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for comp in components or []:
        yield comp
        yield from walk_components(comp.get("components", []))
        if isinstance(comp.get("accessory"), dict):
            yield comp["accessory"]
        if isinstance(comp.get("component"), dict):
            yield from walk_components([comp["component"]])


def build_options(
    options: dict[str, Any] | list[dict[str, Any]] | None,
    subcommand_group: str | None,
    subcommand: str | None,
) -> list[dict[str, Any]]:
    """Slash command options in Discord's shape; types inferred from the Python values."""
    if isinstance(options, list):
        opts = list(options)
    else:
        opts = [option_payload(name, value) for name, value in (options or {}).items()]
    if subcommand_group and not subcommand:
        raise ValueError("subcommand_group needs a subcommand")
    if subcommand:
        opts = [{"type": 1, "name": subcommand, "options": opts}]
    if subcommand_group:
        opts = [{"type": 2, "name": subcommand_group, "options": opts}]
    return opts


def option_payload(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):  # a raw option: {"type": 6, "value": "123"}
        return {"name": name, **value}
    if isinstance(value, bool):
        kind = 5
    elif isinstance(value, int):
        kind = 4
    elif isinstance(value, float):
        kind = 10
    elif isinstance(value, str):
        kind = 3
    else:
        raise TypeError(f"cannot infer the option type of {name}={value!r}; pass a raw option dict")
    return {"name": name, "type": kind, "value": value}


def guess_content_type(filename: str, sent: str | None) -> str:
    guessed, _ = mimetypes.guess_type(filename)
    if guessed:
        return guessed
    return sent or "application/octet-stream"


def random_token() -> str:
    return "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)
