"""REST half of the loopback fake Discord: the /api/v10 routes discord.py calls.

A mixin of ``FakeDiscord`` (``fake_discord.py``), which owns the state these handlers use. Every
handler runs on the fake's own loop and touches state only under ``self._lock``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web

from tests.fakes.fake_discord_models import (
    EPHEMERAL,
    LOADING,
    SUPPRESS_EMBEDS,
    FakeMessage,
    FakeRequest,
    InteractionRecord,
    error_response,
    guess_content_type,
    invalid_form,
    json_response,
    message_payload,
    partial_guild_payload,
    walk_components,
)

API_PREFIX = "/api/v10"
NONCE_WINDOW_S = 300.0
TOKEN_TTL_S = 15 * 60.0
Result = FakeMessage | web.Response
BODY_JSON = web.RequestKey("fake_discord_json", object)
BODY_UPLOADS = web.RequestKey("fake_discord_uploads", list)


@dataclass
class Upload:
    index: int
    filename: str
    data: bytes
    content_type: str | None


@dataclass
class Rule:
    kind: str  # "fail" or "drop"
    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    retry_after: float | None
    body: dict[str, Any] | None

    def matches(self, method: str, path: str) -> bool:
        return self.remaining > 0 and self.method in ("*", method) and self.pattern.search(path) is not None

    def response(self) -> web.Response:
        headers: dict[str, str] = {}
        if self.status == 429:
            retry = 0.05 if self.retry_after is None else self.retry_after
            body = {"message": "You are being rate limited.", "retry_after": retry, "global": False}
            headers = {
                "Via": "1.1 google",
                "Retry-After": str(max(1, round(retry))),
                "X-RateLimit-Scope": "user",
            }
        else:
            body = {"message": f"{self.status}: Scripted failure", "code": 0}
        return json_response(self.body or body, self.status, headers)


class RestRoutes:
    """Route table and handlers; state attributes are created by ``FakeDiscord.__init__``."""

    def _add_rest_routes(self, app: web.Application) -> None:
        r = app.router
        p = API_PREFIX
        r.add_get(p + "/users/@me", self._get_me)
        r.add_post(p + "/users/@me/channels", self._create_dm)
        r.add_get(p + "/users/@me/guilds", self._get_my_guilds)
        r.add_get(p + "/oauth2/applications/@me", self._get_application)
        r.add_get(p + "/applications/@me", self._get_application)
        r.add_get(p + "/gateway", self._get_gateway)
        r.add_get(p + "/gateway/bot", self._get_gateway)
        for path in ("/applications/{app}/commands", "/applications/{app}/guilds/{gid}/commands"):
            r.add_put(p + path, self._put_commands)
            r.add_get(p + path, self._get_commands)
        r.add_post(p + "/interactions/{iid}/{token}/callback", self._interaction_callback)
        r.add_post(p + "/webhooks/{app}/{token}", self._followup)
        for method in ("GET", "PATCH", "DELETE"):
            r.add_route(method, p + "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message)
            r.add_route(method, p + "/channels/{cid}/messages/{mid}", self._channel_message)
        r.add_post(p + "/channels/{cid}/messages", self._post_channel_message)
        r.add_get(p + "/channels/{cid}", self._get_channel)
        r.add_get("/attachments/{cid}/{aid}/{filename}", self._get_attachment)

    # -- middleware: parse, record, scripted failures, JSON 404s -----------------------------
    @web.middleware
    async def _api_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX + "/"):
            return await handler(request)
        rel = request.path[len(API_PREFIX) :]
        payload, uploads = await self._parse_body(request)
        request[BODY_JSON], request[BODY_UPLOADS] = payload, uploads
        auth = request.headers.get("Authorization")
        rec = FakeRequest(
            method=request.method,
            path=rel,
            query=dict(request.query),
            json=payload,
            files={u.filename: u.data for u in uploads},
            headers={k: v for k, v in request.headers.items() if k.lower() != "authorization"},
            authorization=auth is not None,
            at=time.time(),
        )
        with self._lock:
            self._requests.append(rec)
            rule = next((x for x in self._rules if x.matches(request.method, rel)), None)
            if rule is not None:
                rule.remaining -= 1
                rec.scripted = True
                rec.status = 0 if rule.kind == "drop" else rule.status
        if rule is not None:
            if rule.kind == "drop":
                if request.transport is not None:
                    request.transport.close()
                raise asyncio.CancelledError  # aiohttp drops the request quietly
            return rule.response()
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own 404/405
            with self._lock:
                rec.unexpected = True
            text = "404: Not Found" if exc.status == 404 else f"{exc.status}: {exc.reason}"
            response = json_response({"message": text, "code": 0}, exc.status)
        with self._lock:
            rec.status = response.status
        return response

    async def _parse_body(self, request: web.Request) -> tuple[Any, list[Upload]]:
        if not request.can_read_body:
            return None, []
        if request.content_type.startswith("multipart/"):
            payload: Any = None
            uploads: list[Upload] = []
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    continue
                data = bytes(await part.read(decode=False))
                name = part.name or ""
                if name == "payload_json":
                    payload = json.loads(data)
                elif part.filename is not None:
                    m = re.fullmatch(r"files\[(\d+)\]", name)
                    index = int(m.group(1)) if m else len(uploads)
                    uploads.append(Upload(index, part.filename, data, part.headers.get("Content-Type")))
            return payload, uploads
        raw = await request.read()
        if not raw:
            return None, []
        try:
            return json.loads(raw), []
        except ValueError:
            return raw.decode(errors="replace"), []

    # -- small helpers ---------------------------------------------------------------------------
    def _is_bot(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.bot_token}"

    def _msg_json(self, msg: FakeMessage) -> dict[str, Any]:
        rec = self._interactions.get(msg.interaction_id) if msg.interaction_id else None
        return message_payload(
            msg, root=self.url, bot_user=self._bot_user, application_id=self.application_id, interaction=rec
        )

    def _validate(self, data: dict[str, Any], uploads: list[Upload]) -> web.Response | None:
        content = data.get("content")
        if content is not None and len(str(content)) > 2000:
            return invalid_form("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        if len(data.get("embeds") or []) > 10:
            return invalid_form("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        if sum(len(u.data) for u in uploads) > self.attachment_size_limit:
            return error_response("too_large")
        seen: set[str] = set()
        for comp in walk_components(data.get("components") or []):
            cid = comp.get("custom_id")
            if cid is None:
                continue
            if len(cid) > 100:
                return invalid_form("components", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
            if cid in seen:
                return invalid_form("components", "COMPONENT_CUSTOM_ID_DUPLICATED", "Duplicate custom_id.")
            seen.add(cid)
        return None

    def _new_attachment(self, upload: Upload, meta: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": self._ids(),
            "filename": upload.filename,
            "bytes": upload.data,
            "content_type": guess_content_type(upload.filename, upload.content_type),
            "size": len(upload.data),
            "description": (meta or {}).get("description"),
        }

    def _create_message(
        self,
        channel_id: int,
        guild_id: int | None,
        data: dict[str, Any],
        uploads: list[Upload],
        *,
        interaction: InteractionRecord | None = None,
        flags: int | None = None,
        allow_empty: bool = False,
    ) -> Result:
        """Create and store a message; the caller holds the lock."""
        error = self._validate(data, uploads)
        if error is not None:
            return error
        metas = {str(a.get("id")): a for a in data.get("attachments") or []}
        attachments = [self._new_attachment(u, metas.get(str(u.index))) for u in uploads]
        msg = FakeMessage(
            id=self._ids(),
            channel_id=channel_id,
            guild_id=guild_id,
            content=str(data.get("content") or ""),
            embeds=list(data.get("embeds") or []),
            components=list(data.get("components") or []),
            attachments=attachments,
            allowed_mentions=data.get("allowed_mentions"),
            flags=(data.get("flags") or 0) if flags is None else flags,
            interaction_id=interaction.id if interaction else None,
            webhook=interaction is not None,
            type=20 if interaction is not None and interaction.type == 2 else 0,
        )
        for key in ("tts", "message_reference", "sticker_ids", "poll"):
            if key in data:
                msg.extra[key] = data[key]
        empty = not (msg.content or msg.embeds or msg.attachments or msg.components or msg.extra.get("poll"))
        if empty and not allow_empty and not msg.extra.get("sticker_ids"):
            return error_response("empty_message")
        msg.history.append({"op": "create", "payload": data, "files": [u.filename for u in uploads]})
        self._messages[msg.id] = msg
        return msg

    def _edit_message(self, msg: FakeMessage, data: dict[str, Any], uploads: list[Upload]) -> Result:
        """Apply an edit (PATCH semantics) to a stored message; the caller holds the lock."""
        error = self._validate(data, uploads)
        if error is not None:
            return error
        new = dataclasses.replace(msg)
        if "content" in data:
            new.content = str(data["content"] or "")
        if "embeds" in data:
            new.embeds = list(data["embeds"] or [])
        if "components" in data:
            new.components = list(data["components"] or [])
        if "allowed_mentions" in data:
            new.allowed_mentions = data["allowed_mentions"]
        if "attachments" in data:
            by_index = {u.index: u for u in uploads}
            kept = {str(a["id"]): a for a in new.attachments}
            atts: list[dict[str, Any]] = []
            for meta in data["attachments"] or []:
                key = str(meta.get("id"))
                if key in kept:
                    atts.append(kept[key])
                elif key.isdigit() and int(key) in by_index:
                    atts.append(self._new_attachment(by_index.pop(int(key)), meta))
            atts.extend(self._new_attachment(u, None) for u in by_index.values())
            new.attachments = atts
        else:
            new.attachments = new.attachments + [self._new_attachment(u, None) for u in uploads]
        suppress = (data.get("flags") or 0) if "flags" in data else new.flags
        new.flags = (new.flags & ~(LOADING | SUPPRESS_EMBEDS)) | (suppress & SUPPRESS_EMBEDS)
        if not (new.content or new.embeds or new.attachments or new.components or new.extra.get("poll")):
            return error_response("empty_message")
        msg.__dict__.update(new.__dict__)
        msg.edits += 1
        msg.edited_at = time.time()
        msg.history.append({"op": "edit", "payload": data, "files": [u.filename for u in uploads]})
        return msg

    def _answer(self, result: Result, status: int = 200) -> web.Response:
        if isinstance(result, web.Response):
            return result
        return json_response(self._msg_json(result), status)

    # -- identity, gateway, application ----------------------------------------------------
    async def _get_me(self, request: web.Request) -> web.Response:
        if not self._is_bot(request):
            return error_response("unauthorized")
        return json_response({**self._bot_user, "verified": True, "mfa_enabled": False, "locale": "en-US"})

    async def _get_my_guilds(self, request: web.Request) -> web.Response:
        """The bot's guilds in id order, paged as Discord pages them (`after`, `limit` up to 200)."""
        if not self._is_bot(request):
            return error_response("unauthorized")
        try:
            after = int(request.query.get("after", 0))
            limit = int(request.query.get("limit", 200))
        except ValueError:
            return invalid_form("limit", "NUMBER_TYPE_COERCE", "Value is not int.")
        if not 1 <= limit <= 200:
            return invalid_form("limit", "NUMBER_TYPE_MAX", "int value should be between 1 and 200.")
        with self._lock:
            guilds = sorted((g for g in self._guilds.values() if g.id > after), key=lambda g: g.id)[:limit]
            return json_response([partial_guild_payload(g, self.bot_user_id) for g in guilds])

    async def _get_application(self, request: web.Request) -> web.Response:
        if not self._is_bot(request):
            return error_response("unauthorized")
        owner = {"id": str(self.owner_user_id), "username": "owner", "discriminator": "0", "avatar": None}
        return json_response(
            {
                "id": str(self.application_id),
                "name": self._bot_user["username"],
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": owner,
                "team": None,
                "verify_key": "0" * 64,
                "flags": 0,
                "bot": self._bot_user,
                "interactions_endpoint_url": None,
                "summary": "",
                "rpc_origins": [],
            }
        )

    async def _get_gateway(self, request: web.Request) -> web.Response:
        data: dict[str, Any] = {"url": self.gateway_url}
        if request.path.endswith("/bot"):
            if not self._is_bot(request):
                return error_response("unauthorized")
            limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
            data.update(shards=1, session_start_limit=limit)
        return json_response(data)

    async def _create_dm(self, request: web.Request) -> web.Response:
        if not self._is_bot(request):
            return error_response("unauthorized")
        recipient = int((request[BODY_JSON] or {}).get("recipient_id", 0))
        with self._lock:
            channel_id = self._dm_channel(recipient, None)
            return json_response(self._channels[channel_id]["payload"])

    # -- application commands ----------------------------------------------------------------
    def _commands_scope(self, request: web.Request) -> web.Response | int | None:
        if not self._is_bot(request):
            return error_response("unauthorized")
        if request.match_info["app"] != str(self.application_id):
            return error_response("missing_access")
        gid = request.match_info.get("gid")
        if gid is not None and int(gid) not in self._guilds:
            return error_response("missing_access")
        return int(gid) if gid is not None else None

    async def _put_commands(self, request: web.Request) -> web.Response:
        scope = self._commands_scope(request)
        if isinstance(scope, web.Response):
            return scope
        body = request[BODY_JSON]
        if not isinstance(body, list):
            return invalid_form("_root", "LIST_TYPE_CONVERT", "Must be an array.")
        stored = []
        with self._lock:
            for cmd in body:
                key = (scope, cmd.get("name"), cmd.get("type", 1))
                cmd_id = self._command_ids.setdefault(key, self._ids())
                full = {
                    "type": 1,
                    "description": "",
                    "options": [],
                    "default_member_permissions": None,
                    "nsfw": False,
                    "integration_types": [0],
                    "contexts": None,
                    "name_localizations": None,
                    "description_localizations": None,
                    **cmd,
                    "id": str(cmd_id),
                    "application_id": str(self.application_id),
                    "version": str(self._ids()),
                }
                if scope is not None:
                    full["guild_id"] = str(scope)
                stored.append(full)
            self._commands[scope] = stored
            self._sync_count += 1
        return json_response(stored)

    async def _get_commands(self, request: web.Request) -> web.Response:
        scope = self._commands_scope(request)
        if isinstance(scope, web.Response):
            return scope
        with self._lock:
            return json_response(self._commands.get(scope, []))

    # -- interactions ------------------------------------------------------------------------
    async def _interaction_callback(self, request: web.Request) -> web.Response:
        iid = int(request.match_info["iid"]) if request.match_info["iid"].isdigit() else 0
        body = request[BODY_JSON] if isinstance(request[BODY_JSON], dict) else {}
        kind, data = body.get("type"), body.get("data") or {}
        with self._lock:
            rec = self._interactions.get(iid)
            if rec is None or rec.token != request.match_info["token"] or self._token_dead(rec):
                return error_response("unknown_interaction")
            late = self.callback_timeout is not None and time.time() - rec.pushed_at > self.callback_timeout
            if late:
                return error_response("unknown_interaction")
            if rec.callbacks:
                return error_response("already_acknowledged")
            result: Result | None = None
            if kind in (4, 5):
                if kind == 5:
                    flags = LOADING | ((data.get("flags") or 0) & EPHEMERAL)
                    result = self._create_message(
                        rec.channel_id, rec.guild_id, {}, [], interaction=rec, flags=flags, allow_empty=True
                    )
                else:
                    result = self._create_message(
                        rec.channel_id, rec.guild_id, data, request[BODY_UPLOADS], interaction=rec
                    )
                if isinstance(result, FakeMessage):
                    rec.original_id = result.id
            elif kind in (6, 7):
                source = self._messages.get(rec.source_message_id or 0)
                if rec.type not in (3, 5) or source is None or source.deleted:
                    return invalid_form("type", "INTERACTION_RESPONSE_TYPE_INVALID", "Invalid response type.")
                result = self._edit_message(source, data, request[BODY_UPLOADS]) if kind == 7 else source
                if isinstance(result, FakeMessage):
                    rec.original_id = source.id
            elif (kind == 8 and rec.type != 4) or (kind == 9 and rec.type not in (2, 3)) or kind not in (8, 9, 12):
                return invalid_form("type", "INTERACTION_RESPONSE_TYPE_INVALID", "Invalid response type.")
            if isinstance(result, web.Response):
                return result
            rec.callbacks.append(kind)
            rec.responses.append(body)
            answer: dict[str, Any] = {
                "interaction": {
                    "id": str(rec.id),
                    "type": rec.type,
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": bool(result is not None and result.flags & EPHEMERAL),
                },
                "resource": {"type": kind},
            }
            if result is not None:
                answer["interaction"]["response_message_id"] = str(result.id)
                answer["resource"]["message"] = self._msg_json(result)
        if request.query.get("with_response") in ("1", "true", "True"):
            return json_response(answer)
        return web.Response(status=204)

    def _token_dead(self, rec: InteractionRecord) -> bool:
        return rec.expired or time.time() - rec.pushed_at > TOKEN_TTL_S

    def _webhook_interaction(self, request: web.Request) -> InteractionRecord | web.Response:
        rec = self._interactions.get(self._tokens.get(request.match_info["token"], 0))
        if rec is None or self._token_dead(rec):
            return error_response("invalid_webhook_token")
        if request.match_info["app"] != str(self.application_id) or not rec.callbacks:
            return error_response("unknown_webhook")
        return rec

    async def _followup(self, request: web.Request) -> web.Response:
        data = request[BODY_JSON] if isinstance(request[BODY_JSON], dict) else {}
        with self._lock:
            rec = self._webhook_interaction(request)
            if isinstance(rec, web.Response):
                return rec
            loading = self._loading_original(rec)
            if loading is not None:
                # Documented: the first followup after a deferred (type 5) response edits the
                # "thinking…" message instead of creating one, keeping the defer's visibility (the
                # ephemeral flag is ignored); if that message was deleted, it fails with 10008
                # (discord-api-docs #3087).
                if loading.deleted:
                    return error_response("unknown_message")
                return self._answer(self._edit_message(loading, data, request[BODY_UPLOADS]))
            result = self._create_message(rec.channel_id, rec.guild_id, data, request[BODY_UPLOADS], interaction=rec)
            if isinstance(result, FakeMessage):
                rec.followup_ids.append(result.id)
            if request.query.get("wait") not in ("1", "true", "True") and isinstance(result, FakeMessage):
                return web.Response(status=204)
            return self._answer(result)

    def _loading_original(self, rec: InteractionRecord) -> FakeMessage | None:
        """The deferred response's message while it still shows "thinking…" (deleted or not)."""
        if not rec.callbacks or rec.callbacks[0] != 5:
            return None
        original = self._messages.get(rec.original_id or 0)
        return original if original is not None and original.flags & LOADING else None

    async def _webhook_message(self, request: web.Request) -> web.Response:
        data = request[BODY_JSON] if isinstance(request[BODY_JSON], dict) else {}
        mid = request.match_info["mid"]
        with self._lock:
            rec = self._webhook_interaction(request)
            if isinstance(rec, web.Response):
                return rec
            target = rec.original_id if mid == "@original" else int(mid) if mid.isdigit() else None
            msg = self._messages.get(target or 0)
            allowed = target is not None and (target == rec.original_id or target in rec.followup_ids)
            if msg is None or msg.deleted or not allowed:
                return error_response("unknown_message")
            return self._message_op(request.method, msg, data, request[BODY_UPLOADS])

    def _message_op(self, method: str, msg: FakeMessage, data: dict[str, Any], uploads: list[Upload]) -> web.Response:
        if method == "GET":
            return self._answer(msg)
        if method == "DELETE":
            msg.deleted = True
            msg.history.append({"op": "delete", "payload": None, "files": []})
            return web.Response(status=204)
        return self._answer(self._edit_message(msg, data, uploads))

    # -- channels ----------------------------------------------------------------------------
    def _bot_channel(self, request: web.Request) -> dict[str, Any] | web.Response:
        if not self._is_bot(request):
            return error_response("unauthorized")
        cid = request.match_info["cid"]
        channel = self._channels.get(int(cid)) if cid.isdigit() else None
        if channel is None:
            return error_response("unknown_channel")
        return channel

    async def _get_channel(self, request: web.Request) -> web.Response:
        with self._lock:
            channel = self._bot_channel(request)
            return channel if isinstance(channel, web.Response) else json_response(channel["payload"])

    async def _post_channel_message(self, request: web.Request) -> web.Response:
        data = request[BODY_JSON] if isinstance(request[BODY_JSON], dict) else {}
        with self._lock:
            channel = self._bot_channel(request)
            if isinstance(channel, web.Response):
                return channel
            cid = int(request.match_info["cid"])
            nonce = data.get("nonce")
            now = time.time()
            if nonce is not None and data.get("enforce_nonce"):
                seen = self._nonces.get((cid, str(nonce)))
                if seen is not None and now - seen[1] < NONCE_WINDOW_S:
                    return self._answer(self._messages[seen[0]])
            result = self._create_message(cid, channel["guild_id"], data, request[BODY_UPLOADS])
            if isinstance(result, FakeMessage) and nonce is not None:
                result.nonce = str(nonce)
                if data.get("enforce_nonce"):
                    self._nonces[(cid, str(nonce))] = (result.id, now)
            return self._answer(result)

    async def _channel_message(self, request: web.Request) -> web.Response:
        data = request[BODY_JSON] if isinstance(request[BODY_JSON], dict) else {}
        with self._lock:
            channel = self._bot_channel(request)
            if isinstance(channel, web.Response):
                return channel
            mid = request.match_info["mid"]
            msg = self._messages.get(int(mid)) if mid.isdigit() else None
            if msg is None or msg.deleted or msg.ephemeral or str(msg.channel_id) != request.match_info["cid"]:
                return error_response("unknown_message")
            return self._message_op(request.method, msg, data, request[BODY_UPLOADS])

    async def _get_attachment(self, request: web.Request) -> web.Response:
        aid = request.match_info["aid"]
        with self._lock:
            for msg in self._messages.values():
                for att in msg.attachments:
                    if str(att["id"]) == aid:
                        return web.Response(body=att["bytes"], headers={"Content-Type": att["content_type"]})
        return web.Response(status=404, text="Not Found")
