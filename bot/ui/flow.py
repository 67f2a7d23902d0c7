"""The start of every generation in Discord: admit first, acknowledge only an accepted job.

Used by the slash commands and the Reroll button alike. Everything that can refuse (input,
blocks, channels, rules, cooldown, limits, budget, queue room, the 15-minute window) is decided
by the service *before* the interaction is answered, so a refusal is the interaction's one and
only response, a private message (the error boundary in bot/tree.py sends it). Discord cannot
turn a public "thinking…" into a private answer afterwards: a followup right after a deferral
edits the deferred message and keeps it public, and fails if that message was deleted.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import discord

from bot import i18n
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
        locale=_code(interaction.locale),
        guild_locale=_code(interaction.guild_locale),
    )


def _code(locale: discord.Locale | None) -> str | None:
    return locale.value if locale is not None else None


def locale_of(interaction: discord.Interaction) -> str:
    """The catalogue for what this person reads: their client's language, else the server's, else English."""
    return i18n.resolve(interaction.locale, interaction.guild_locale)


def guild_locale_of(interaction: discord.Interaction) -> str:
    """The catalogue for what the whole server reads (the moderation log): its preferred language."""
    return i18n.resolve(None, interaction.guild_locale)


async def acknowledge(interaction: discord.Interaction, *, private: bool = False) -> int:
    """Defer ("thinking…"): the message every later update edits in place; its id. A private
    request is deferred ephemerally, so the result edit stays visible to the requester only."""
    callback = await interaction.response.defer(ephemeral=private, thinking=True)
    message_id = callback.message_id if callback is not None else None
    if message_id is None:  # older API answers carry no message id: ask for it
        message_id = (await interaction.original_response()).id
    return message_id


async def start(service: GenerationService, interaction: discord.Interaction, request: GenerationRequest) -> Ticket:
    """Submit; the job id is the interaction id, so a replayed interaction cannot create a second job."""
    expires_at = interaction.created_at + TOKEN_LIFETIME
    deadline_s = (expires_at - datetime.now(UTC)).total_seconds() - DELIVERY_MARGIN_S
    return await service.submit(
        request,
        requester_of(interaction),
        job_id=interaction.id,
        deadline_s=deadline_s,
        reply=ReplyHandle(interaction.token, expires_at),
        acknowledge=lambda: acknowledge(interaction, private=request.private),
    )
