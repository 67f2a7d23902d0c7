"""A guild's moderation log channel: refusals by rules, provider safety refusals, admin changes."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot.gatekeeper import Gatekeeper
from bot.i18n import resolve, say

if TYPE_CHECKING:
    from bot.contracts import Delivery

log = logging.getLogger("imagine.service")


class ModerationLog:
    def __init__(self, gatekeeper: Gatekeeper | None, delivery: Delivery) -> None:
        self._gate = gatekeeper
        self._delivery = delivery

    async def post(self, guild_id: int, text: str, guild_locale: str | None = None) -> None:
        """Post if the guild has a log channel, in the server's language (`guild_locale` is
        Discord's code of its preferred locale); best effort (a failure is logged, never raised)."""
        if self._gate is None:
            return
        try:
            channel_id = (await self._gate.policy(guild_id)).log_channel_id
            if channel_id is not None:
                await self._delivery.moderation(channel_id, say(resolve(None, guild_locale), text))
        except Exception:
            log.exception("could not post to the moderation log of guild %s", guild_id)


def excerpt(text: str, limit: int = 200) -> str:
    """A user's text quoted in one line."""
    return "> " + (text if len(text) <= limit else text[: limit - 1] + "…").replace("\n", " ")
