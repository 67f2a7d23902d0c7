"""The buttons under every image: Reroll, Remix, Details, Delete; and Cancel under a waiting job.

They are dynamic items: the job id travels in the custom_id and everything else is read from
the store, so the buttons keep working on old messages after a restart.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot import i18n
from bot.errors import ImagineError
from bot.tree import report_error
from bot.ui import flow, render
from bot.ui.remix import RemixModal

if TYPE_CHECKING:
    from bot.app import ImagineBot
    from bot.storage.jobs import Job


class _JobButton(discord.ui.DynamicItem[discord.ui.Button], template=r"imagine:(?P<action>\w+):(?P<job_id>\d+)"):
    """Base: parses `imagine:<action>:<job id>`; subclasses set the action and the handler."""

    action = ""
    emoji = ""
    style = discord.ButtonStyle.secondary

    def __init__(self, job_id: int, locale: str = i18n.DEFAULT) -> None:
        super().__init__(
            discord.ui.Button(
                label=i18n.t(locale, f"button.{self.action}"),
                emoji=self.emoji,
                style=self.style,
                custom_id=f"imagine:{self.action}:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> _JobButton:
        return cls(int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        try:
            await self.handle(interaction, interaction.client)
        except Exception as error:  # the same boundary as the slash commands
            await report_error(interaction, error)

    async def handle(self, interaction: discord.Interaction, bot: ImagineBot) -> None:
        raise NotImplementedError

    async def _job_or_say_gone(self, interaction: discord.Interaction, bot: ImagineBot, locale: str) -> Job | None:
        """The button's job; or None, once the clicker has been told privately that it is gone."""
        job = await bot.service.jobs.get(self.job_id)
        if job is None:
            await interaction.response.send_message(render.JOB_GONE.render(locale), ephemeral=True)
        return job


class RerollButton(_JobButton, template=r"imagine:reroll:(?P<job_id>\d+)"):
    action, emoji = "reroll", "🔄"

    async def handle(self, interaction: discord.Interaction, bot: ImagineBot) -> None:
        job = await bot.service.jobs.get(self.job_id)
        if job is None:
            raise ImagineError(render.JOB_GONE)
        # admitted first, then a new public message for the new image; a refusal is private
        await flow.start(bot.service, interaction, bot.requests.reroll(job))


class RemixButton(_JobButton, template=r"imagine:remix:(?P<job_id>\d+)"):
    """Opens the Remix form; its submission is a new job like any command (bot/ui/remix.py)."""

    action, emoji = "remix", "✏️"

    async def handle(self, interaction: discord.Interaction, bot: ImagineBot) -> None:
        locale = flow.locale_of(interaction)
        if (job := await self._job_or_say_gone(interaction, bot, locale)) is None:
            return
        await interaction.response.send_modal(RemixModal(bot, job, locale, opened_by=interaction.id))


class DetailsButton(_JobButton, template=r"imagine:details:(?P<job_id>\d+)"):
    action, emoji = "details", "ℹ️"

    async def handle(self, interaction: discord.Interaction, bot: ImagineBot) -> None:
        locale = flow.locale_of(interaction)
        if (job := await self._job_or_say_gone(interaction, bot, locale)) is None:
            return
        await interaction.response.send_message(
            embed=render.details_embed(job, locale), ephemeral=True, allowed_mentions=render.NO_PINGS
        )


class DeleteButton(_JobButton, template=r"imagine:delete:(?P<job_id>\d+)"):
    action, emoji = "delete", "🗑️"
    style = discord.ButtonStyle.danger

    async def handle(self, interaction: discord.Interaction, bot: ImagineBot) -> None:
        job = await bot.service.jobs.get(self.job_id)
        allowed = interaction.permissions.manage_messages or (job is not None and job.user_id == interaction.user.id)
        if not allowed:
            text = render.NOT_ALLOWED_TO_DELETE.render(flow.locale_of(interaction))
            await interaction.response.send_message(text, ephemeral=True)
            return
        await interaction.response.defer()  # for a button, the "original" is the message it sits on
        await interaction.delete_original_response()


class CancelButton(_JobButton, template=r"imagine:cancel:(?P<job_id>\d+)"):
    """Under a waiting job's "Queued" message. The service decides (bot/service.py: cancel): out
    of the queue with its reservation given back, or, once taken to be sent, refused as too late."""

    action, emoji = "cancel", "✖️"

    async def handle(self, interaction: discord.Interaction, bot: ImagineBot) -> None:
        locale = flow.locale_of(interaction)
        if (job := await self._job_or_say_gone(interaction, bot, locale)) is None:
            return
        if not (interaction.permissions.manage_messages or job.user_id == interaction.user.id):
            await interaction.response.send_message(render.NOT_ALLOWED_TO_CANCEL.render(locale), ephemeral=True)
            return
        await interaction.response.defer()  # acknowledged at once; the job's own message says "Cancelled"
        outcome = await bot.service.cancel(self.job_id)
        if outcome in render.CANCEL_REFUSED:
            await interaction.followup.send(render.CANCEL_REFUSED[outcome].render(locale), ephemeral=True)


BUTTONS = (RerollButton, RemixButton, DetailsButton, DeleteButton)
#: every button the bot answers (the Cancel button sits on a waiting job's message, not under an image)
HANDLED = (*BUTTONS, CancelButton)


def result_view(job_id: int, locale: str = i18n.DEFAULT) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for button in BUTTONS:
        view.add_item(button(job_id, locale))
    return view


def queued_view(job_id: int, locale: str = i18n.DEFAULT) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id, locale))
    return view


class Results(commands.Cog):
    """Registers the buttons twice: as dynamic items (so a click on any result message is handled,
    even one posted before a restart) and as the bot's result view (what the delivery puts under a
    new image). The bot is handed `result_view` here rather than importing it, because this module
    imports the bot: `bot.app` never imports a cog, so there is no import cycle between them.
    """

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(*HANDLED)
        self.bot.register_result_view(result_view)
        self.bot.register_queued_view(queued_view)

    async def cog_unload(self) -> None:
        self.bot.register_result_view(None)
        self.bot.register_queued_view(None)
        self.bot.remove_dynamic_items(*HANDLED)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Results(bot))
