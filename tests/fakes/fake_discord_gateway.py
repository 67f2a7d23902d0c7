"""Gateway half of the loopback fake Discord: the websocket discord.py connects to.

A mixin of ``FakeDiscord`` (``fake_discord.py``). HELLO -> IDENTIFY -> READY + one GUILD_CREATE
per guild, heartbeat ACKs, RESUME with replay of missed events (or op 9 when the session is gone),
and dispatches pushed by the test with increasing sequence numbers.
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

from tests.fakes.fake_discord_models import guild_create_payload

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


class GatewayMixin:
    """Websocket handler and dispatching; state attributes are created by ``FakeDiscord.__init__``."""

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = GatewayConn(ws)
        with self._lock:
            self._conns.add(conn)
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
        session = GatewaySession(secrets.token_hex(16), time.time(), d.get("intents"))
        with self._lock:
            self._identify_count += 1
            self._identifies.append({k: v for k, v in d.items() if k != "token"})
            self._sessions[session.session_id] = session
            for other in self._sessions.values():  # one bot at a time: older sessions are superseded
                if other is not session:
                    other.invalid = True
            session.conn = conn
            conn.session = session
            guilds = list(self._guilds.values())
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
            session.seq += 1
            seq = session.seq
            text = json.dumps({"op": 0, "t": event, "s": seq, "d": data})
            session.backlog.append((seq, text))
            conn = session.conn
        if conn is not None:
            await self._send_text(conn, text)
        return seq

    def _current_session(self) -> GatewaySession | None:
        """The newest session that can take events (connected, or resumable)."""
        with self._lock:
            live = [s for s in self._sessions.values() if not s.invalid]
            connected = [s for s in live if s.conn is not None and s.ready]
            pool = connected or live
            return max(pool, key=lambda s: s.identified_at) if pool else None

    async def _push_async(self, event: str, data: Any) -> int:
        session = self._current_session()
        if session is None:
            raise RuntimeError(f"cannot push {event}: no bot has identified with the fake gateway")
        return await self._dispatch(session, event, data)

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
