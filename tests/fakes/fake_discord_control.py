"""Control endpoints of the loopback fake Discord, for driving it from another process.

A mixin of ``FakeDiscord`` (``fake_discord.py``), used by benchmarks that run the fake standalone:
``POST /_control/slash`` {name, options, guild_id, channel_id, user_id, subcommand...} -> {id, token};
``POST /_control/click`` {message_id, custom_id, user_id}; ``GET /_control/messages`` (no bytes:
attachment sizes and SHA-256s; ``history`` lists each create and edit with the files it uploaded, so
a benchmark can count how often an image was delivered into one message); ``GET /_control/state``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from aiohttp import web

from tests.fakes.fake_discord_models import DEFAULT_PERMISSIONS, UNSET, SentInteraction, json_response


class ControlRoutes:
    def _add_control_routes(self, app: web.Application) -> None:
        app.router.add_post("/_control/slash", self._control_slash)
        app.router.add_post("/_control/click", self._control_click)
        app.router.add_get("/_control/messages", self._control_messages)
        app.router.add_get("/_control/state", self._control_state)

    async def _control_slash(self, request: web.Request) -> web.Response:
        body = await request.json()
        sent = self._prepare_slash(
            body["name"],
            body.get("options"),
            guild_id=body.get("guild_id", self.guild_id),
            channel_id=body.get("channel_id"),
            user_id=body.get("user_id"),
            roles=body.get("roles", ()),
            permissions=body.get("permissions", DEFAULT_PERMISSIONS),
            subcommand_group=body.get("subcommand_group"),
            subcommand=body.get("subcommand"),
            username=body.get("username"),
            locale="en-US",
            resolved=None,
            command_guild_id=UNSET,
        )
        return await self._control_push(sent)

    async def _control_click(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            sent = self._prepare_click(
                int(body["message_id"]),
                body["custom_id"],
                guild_id=UNSET,
                values=body.get("values"),
                channel_id=None,
                user_id=body.get("user_id"),
                username=None,
                roles=body.get("roles", ()),
                permissions=DEFAULT_PERMISSIONS,
                locale="en-US",
                component_type=body.get("component_type", 2),
            )
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        return await self._control_push(sent)

    async def _control_push(self, sent: SentInteraction) -> web.Response:
        try:
            await self._push_async("INTERACTION_CREATE", sent.payload)
        except RuntimeError as exc:
            return json_response({"error": str(exc)}, 409)
        return json_response({"id": str(sent.id), "token": sent.token})

    async def _control_messages(self, request: web.Request) -> web.Response:
        with self._lock:
            out = [
                {
                    "id": str(m.id),
                    "channel_id": str(m.channel_id),
                    "content": m.content,
                    "embeds": m.embeds,
                    "components": m.components,
                    "attachments": [
                        {
                            "filename": a["filename"],
                            "size": a["size"],
                            "content_type": a["content_type"],
                            "sha256": _sha256_of(a),
                        }
                        for a in m.attachments
                    ],
                    "flags": m.flags,
                    "deleted": m.deleted,
                    "interaction_id": str(m.interaction_id) if m.interaction_id else None,
                    "edits": m.edits,
                    "history": [{"op": h["op"], "files": list(h["files"])} for h in m.history],
                    "created_at": m.created_at,
                    "edited_at": m.edited_at,
                }
                for m in self._messages.values()
            ]
        return json_response(out)

    async def _control_state(self, request: web.Request) -> web.Response:
        with self._lock:
            state = {
                "identify_count": self._identify_count,
                "ready": self._has_ready_bot(),
                "sync_count": self._sync_count,
                "requests": len(self._requests),
                "application_id": str(self.application_id),
                "bot_user_id": str(self.bot_user_id),
                "guilds": [
                    {"id": str(g.id), "channel_ids": [str(c) for c in g.channel_ids]} for g in self._guilds.values()
                ],
            }
        return json_response(state)


def _sha256_of(attachment: dict[str, Any]) -> str:
    """An attachment's SHA-256, computed once (a benchmark polls the messages)."""
    if "sha256" not in attachment:
        attachment["sha256"] = hashlib.sha256(attachment["bytes"]).hexdigest()
    return attachment["sha256"]
