"""The one error boundary for slash commands and buttons.

Every error becomes the sentence of the error table. Refusals are decided before a command
acknowledges anything, so they are the interaction's one and only response, a private message
(see bot/ui/flow.py). Unexpected errors are logged with a short reference the user can quote.
"""

from __future__ import annotations

import logging
import secrets

import aiohttp
import discord
from discord import app_commands

from bot import messages
from bot.errors import ImagineError
from bot.i18n import t
from bot.ui import flow, render

log = logging.getLogger("imagine.errors")


class ImagineTree(app_commands.CommandTree):
    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.guild_id is None:
            await interaction.response.send_message(
                render.DM_ONLY_TEXT.render(flow.locale_of(interaction)), ephemeral=True
            )
            return False
        return True

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        if isinstance(error, app_commands.CheckFailure) and interaction.response.is_done():
            return  # interaction_check answered already (a DM)
        await report_error(interaction, error)


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Tell the user what went wrong, privately; log what they cannot fix."""
    original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
    locale = flow.locale_of(interaction)  # refusals raised deep in the code carry a key: said in the user's language
    if isinstance(original, ImagineError):
        text = messages.describe(original, locale)
    elif isinstance(original, app_commands.TransformerError):
        text = t(locale, "error.bad_option", value=original.value)
    elif isinstance(original, app_commands.MissingPermissions | app_commands.CheckFailure):
        text = t(locale, "error.no_permission")
    else:
        reference = secrets.token_hex(4)
        log.error("unexpected error in %s (reference %s)", _what(interaction), reference, exc_info=original)
        text = t(locale, "error.ours_reference", reference=reference)
    await reply_privately(interaction, text)


async def reply_privately(interaction: discord.Interaction, text: str) -> None:
    """The error's sentence as the interaction's answer.

    Not answered yet (every refusal: admission runs before any acknowledgement): the one and
    only response, private. Deferred: the deferred message itself is edited, since Discord turns
    a followup right after a deferral into that edit anyway and keeps its visibility (private for
    the admin commands, which defer privately; public only for an accepted job, whose failures
    are shown in place). Otherwise a private followup.
    """
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True, allowed_mentions=render.NO_PINGS)
        elif interaction.response.type == discord.InteractionResponseType.deferred_channel_message:
            await interaction.edit_original_response(content=text, allowed_mentions=render.NO_PINGS)
        else:
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=render.NO_PINGS)
    except (discord.HTTPException, aiohttp.ClientError) as exc:
        log.warning("could not tell the user about an error in %s: %s", _what(interaction), exc)


def _what(interaction: discord.Interaction) -> str:
    if interaction.command is not None:
        return f"/{interaction.command.qualified_name}"
    custom_id = (interaction.data or {}).get("custom_id", "?")
    return f"component {custom_id}"
