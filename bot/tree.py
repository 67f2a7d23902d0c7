"""The one error boundary for slash commands and buttons.

Every error becomes the sentence of the error table, sent ephemerally whether or not the
interaction was already answered: if a command had already shown a public "thinking…"
reply, that reply is removed and the sentence is sent privately instead, so a refusal never
leaves a public trace. Unexpected errors are logged with a short reference the user can quote.
"""

from __future__ import annotations

import logging
import secrets

import aiohttp
import discord
from discord import app_commands

from bot import messages
from bot.errors import ImagineError
from bot.ui import render

log = logging.getLogger("imagine.errors")


class ImagineTree(app_commands.CommandTree):
    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.guild_id is None:
            await interaction.response.send_message(render.DM_ONLY_TEXT, ephemeral=True)
            return False
        return True

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        if isinstance(error, app_commands.CheckFailure) and interaction.response.is_done():
            return  # interaction_check answered already (a DM)
        await report_error(interaction, error)


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Tell the user what went wrong, privately; log what they cannot fix."""
    original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
    if isinstance(original, ImagineError):
        text = messages.describe(original)
    elif isinstance(original, app_commands.TransformerError):
        text = f"'{original.value}' is not a valid value for that option; pick one from the list."
    elif isinstance(original, app_commands.MissingPermissions | app_commands.CheckFailure):
        text = "You do not have permission to use this command here."
    else:
        reference = secrets.token_hex(4)
        log.error("unexpected error in %s (reference %s)", _what(interaction), reference, exc_info=original)
        text = f"Something went wrong on our side (reference `{reference}`). {messages.NOT_CHARGED}"
    await reply_privately(interaction, text)


async def reply_privately(interaction: discord.Interaction, text: str) -> None:
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True, allowed_mentions=render.NO_PINGS)
            return
        if interaction.response.type == discord.InteractionResponseType.deferred_channel_message:
            try:  # the public "thinking…" reply: a refusal must not stay in the channel
                await interaction.delete_original_response()
            except discord.HTTPException:
                pass
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=render.NO_PINGS)
    except (discord.HTTPException, aiohttp.ClientError) as exc:
        log.warning("could not tell the user about an error in %s: %s", _what(interaction), exc)


def _what(interaction: discord.Interaction) -> str:
    if interaction.command is not None:
        return f"/{interaction.command.qualified_name}"
    custom_id = (interaction.data or {}).get("custom_id", "?")
    return f"component {custom_id}"
