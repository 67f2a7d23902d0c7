"""Gateway half of the loopback fake Discord: the websocket discord.py connects to.

A mixin of ``FakeDiscord`` (``fake_discord.py``). HELLO -> IDENTIFY -> READY + one GUILD_CREATE
per guild, heartbeat ACKs, RESUME with replay of missed events (or op 9 when the session is gone),
and dispatches pushed by the test with increasing sequence numbers.

Sharding as Discord does it: an IDENTIFY with ``shard: [id, count]`` gets READY and GUILD_CREATE
for that shard's guilds only (``(guild_id >> 22) % count == id``), and every event of a guild goes
to a session of the guild's shard (DMs and other guild-less events to shard 0). Without ``shard``
a session has every guild. A new session replaces the older ones of the same shard (and any of
another shard count); sessions of the other shards stay.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.fake_discord_models import guild_create_payload, shard_of

HEARTBEAT_INTERVAL_MS = 41250
BACKLOG = 1000


@dataclass(eq=False)
class GatewayConn:
    ws: web.WebSocketResponse
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    session: GatewaySession | None = None


@dataclass(eq=False)
class GatewaySession:
    session_id: str
    identified_at: float
    intents: int | None
    seq: int = 0
    ready: bool = False  # READY and every GUILD_CREATE sent
    invalid: bool = False  # closed with 1000/1001 or replaced: cannot be resumed
    conn: GatewayConn | None = None
    backlog: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=BACKLOG))
    shard: tuple[int, int] | None = None  # (id, count) from IDENTIFY; None: unsharded (every guild)
    guild_ids: list[int] = field(default_factory=list)  # announced to it (GUILD_CREATE)
    interaction_ids: list[int] = field(default_factory=list)  # INTERACTION_CREATE dispatched to it

    @property
    def shard_key(self) -> tuple[int, int]:
        return self.shard or (0, 1)

    def serves(self, guild_id: int | None) -> bool:
        """Discord sends this guild's events (None: a DM) to this session's shard."""
        shard_id, count = self.shard_key
        return shard_of(guild_id, count) == shard_id

    def replaces(self, other: GatewaySession) -> bool:
        """A newer session takes over the same shard; with another shard count, every shard."""
        (mine, count), (theirs, other_count) = self.shard_key, other.shard_key
        return count != other_count or mine == theirs


@dataclass(frozen=True)
class SessionRecord:
    """What a test can inspect about one gateway session (a copy)."""

    session_id: str
    shard: tuple[int, int] | None
    connected: bool
    ready: bool
    replaced: bool  # closed for good or superseded: events no longer go to it
    guild_ids: tuple[int, ...]
    interaction_ids: tuple[int, ...]


def _event_guild_id(event: str, data: Any) -> int | None:
    """The guild an event belongs to (its shard's session gets it); None for DMs and the like."""
    if not isinstance(data, dict):
        return None
    raw = data.get("id") if event in ("GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE") else data.get("guild_id")
    return int(raw) if raw is not None else None


class GatewayMixin:
    """Websocket handler and dispatching; state attributes are created by ``FakeDiscord.__init__``."""

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = GatewayConn(ws)
        with self._lock:
            self._conns.add(conn)
            self._gateway_connections += 1
        try:
            await self._send_frame(conn, {"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}})
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    await ws.close(code=4002, message=b"Error while decoding payload.")
                    break
                await self._on_frame(conn, frame)
        finally:
            with self._lock:
                self._conns.discard(conn)
                session = conn.session
                if session is not None and session.conn is conn:
                    session.conn = None
                    if ws.close_code in (1000, 1001):
                        session.invalid = True
        return ws

    async def _on_frame(self, conn: GatewayConn, frame: dict[str, Any]) -> None:
        op, d = frame.get("op"), frame.get("d")
        if op == 1:
            await self._send_frame(conn, {"op": 11})
        elif op == 2:
            await self._identify(conn, d or {})
        elif op == 6:
            await self._resume(conn, d or {})
        elif op == 8 and isinstance(d, dict):  # request guild members: answer one empty chunk
            chunk = {"guild_id": str(d.get("guild_id")), "members": [], "chunk_index": 0, "chunk_count": 1}
            if d.get("nonce"):
                chunk["nonce"] = d["nonce"]
            if conn.session is not None:
                await self._dispatch(conn.session, "GUILD_MEMBERS_CHUNK", chunk)
        # op 3 (presence), op 4 (voice) and anything else are ignored

    async def _identify(self, conn: GatewayConn, d: dict[str, Any]) -> None:
        if d.get("token") != self.bot_token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        if conn.session is not None:
            await conn.ws.close(code=4005, message=b"Already authenticated.")
            return
        shard = _shard(d.get("shard"))
        if shard is False:
            await conn.ws.close(code=4010, message=b"Invalid shard.")
            return
        session = GatewaySession(secrets.token_hex(16), time.time(), d.get("intents"), shard=shard)
        with self._lock:
            self._identify_count += 1
            self._identifies.append({k: v for k, v in d.items() if k != "token"})
            self._sessions[session.session_id] = session
            for other in self._sessions.values():  # one bot per shard: older sessions are superseded
                if other is not session and session.replaces(other):
                    other.invalid = True
            session.conn = conn
            conn.session = session
            guilds = [g for g in self._guilds.values() if session.serves(g.id)]
        ready: dict[str, Any] = {
            "v": 10,
            "user": {**self._bot_user, "verified": True, "mfa_enabled": False, "email": None},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "_trace": ["fake-discord"],
        }
        if d.get("shard") is not None:
            ready["shard"] = d["shard"]
        await self._dispatch(session, "READY", ready)
        joined = time.time() - 86400
        for guild in guilds:
            await self._dispatch(session, "GUILD_CREATE", guild_create_payload(guild, self._bot_user, joined))
        with self._lock:
            session.ready = True

    async def _resume(self, conn: GatewayConn, d: dict[str, Any]) -> None:
        if d.get("token") != self.bot_token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        with self._lock:
            session = self._sessions.get(str(d.get("session_id")))
            usable = session is not None and not session.invalid
            if usable:
                self._resume_count += 1
                old = session.conn
                session.conn = conn
                conn.session = session
                seq = d.get("seq") or 0
                missed = [text for s, text in session.backlog if s > seq]
        if not usable:
            await self._send_frame(conn, {"op": 9, "d": False})
            return
        if old is not None and old is not conn:
            await old.ws.close(code=4000)
        for text in missed:
            await self._send_text(conn, text)
        await self._dispatch(session, "RESUMED", {"_trace": ["fake-discord"]})

    # -- sending -----------------------------------------------------------------------------
    async def _send_frame(self, conn: GatewayConn, frame: dict[str, Any]) -> None:
        await self._send_text(conn, json.dumps({"s": None, "t": None, "d": None, **frame}))

    async def _send_text(self, conn: GatewayConn, text: str) -> None:
        async with conn.lock:
            if conn.ws.closed:
                return
            try:
                await conn.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                pass  # the client went away; a RESUME replays the backlog

    async def _dispatch(self, session: GatewaySession, event: str, data: Any) -> int:
        with self._lock:
            if event == "GUILD_CREATE":
                session.guild_ids.append(int(data["id"]))
            elif event == "INTERACTION_CREATE":
                session.interaction_ids.append(int(data["id"]))
            session.seq += 1
            seq = session.seq
            text = json.dumps({"op": 0, "t": event, "s": seq, "d": data})
            session.backlog.append((seq, text))
            conn = session.conn
        if conn is not None:
            await self._send_text(conn, text)
        return seq

    def _current_session(self, guild_id: int | None = None, *, any_guild: bool = True) -> GatewaySession | None:
        """The newest session that can take events (connected, or resumable); unless `any_guild`,
        only a session of the shard that `guild_id` (None: a DM) belongs to."""
        with self._lock:
            live = [s for s in self._sessions.values() if not s.invalid and (any_guild or s.serves(guild_id))]
            connected = [s for s in live if s.conn is not None and s.ready]
            pool = connected or live
            return max(pool, key=lambda s: s.identified_at) if pool else None

    async def _push_async(self, event: str, data: Any) -> int:
        guild_id = _event_guild_id(event, data)
        session = self._current_session(guild_id, any_guild=False)
        if session is None:
            with self._lock:
                anyone = any(not s.invalid for s in self._sessions.values())
            if not anyone:
                raise RuntimeError(f"cannot push {event}: no bot has identified with the fake gateway")
            where = f"guild {guild_id}" if guild_id is not None else "DMs"
            raise RuntimeError(f"cannot push {event}: no bot has identified for the shard of {where}")
        return await self._dispatch(session, event, data)

    def _has_ready_session_for(self, guild_id: int | None) -> bool:
        with self._lock:
            return any(
                s.ready and s.conn is not None and not s.invalid and s.serves(guild_id) for s in self._sessions.values()
            )

    def _session_records(self) -> list[SessionRecord]:
        with self._lock:
            return [
                SessionRecord(
                    s.session_id,
                    s.shard,
                    s.conn is not None,
                    s.ready,
                    s.invalid,
                    tuple(s.guild_ids),
                    tuple(s.interaction_ids),
                )
                for s in sorted(self._sessions.values(), key=lambda s: s.identified_at)
            ]

    def _has_ready_bot(self, min_identifies: int = 1) -> bool:
        with self._lock:
            if self._identify_count < min_identifies:
                return False
            return any(s.ready and s.conn is not None and not s.invalid for s in self._sessions.values())

    async def _close_all(self, code: int = 1001) -> None:
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            await conn.ws.close(code=code, message=b"fake discord going away")

    async def _disconnect_current(self, code: int) -> None:
        session = self._current_session()
        conn = session.conn if session is not None else None
        if conn is not None:
            await conn.ws.close(code=code)


def _shard(value: Any) -> tuple[int, int] | None | bool:
    """IDENTIFY's ``shard``: None when absent, (id, count) when valid, False when invalid (4010)."""
    if value is None:
        return None
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 0 <= value[0] < value[1]
    ):
        return (value[0], value[1])
    return False
