"""The start of every generation in Discord: acknowledge at once, then submit to the service.

Used by the slash commands and the Reroll button alike.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import discord

from bot.contracts import ReplyHandle, Requester, Ticket
from bot.requests import GenerationRequest
from bot.service import GenerationService

#: Discord's interaction tokens live 15 minutes from the interaction's creation.
TOKEN_LIFETIME = timedelta(minutes=15)
#: admission leaves this much of the token's life for download and delivery
DELIVERY_MARGIN_S = 60.0


def requester_of(interaction: discord.Interaction) -> Requester:
    roles = getattr(interaction.user, "roles", [])  # a Member in a server: role overrides of the limits
    return Requester(
        str(interaction.user.id),
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        user_id=interaction.user.id,
        role_ids=tuple(role.id for role in roles),
    )


async def acknowledge(interaction: discord.Interaction) -> ReplyHandle:
    """Defer publicly ("thinking…"): the message every later update edits in place."""
    callback = await interaction.response.defer(thinking=True)
    message_id = callback.message_id if callback is not None else None
    if message_id is None:  # older API answers carry no message id: ask for it
        message_id = (await interaction.original_response()).id
    return ReplyHandle(interaction.token, interaction.created_at + TOKEN_LIFETIME, message_id)


async def submit(
    service: GenerationService,
    interaction: discord.Interaction,
    request: GenerationRequest,
    reply: ReplyHandle,
) -> Ticket:
    """The job id is the interaction id: a replayed interaction cannot create a second job."""
    deadline_s = (reply.expires_at - datetime.now(UTC)).total_seconds() - DELIVERY_MARGIN_S
    return await service.submit(
        request, requester_of(interaction), job_id=interaction.id, deadline_s=deadline_s, reply=reply
    )
