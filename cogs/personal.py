"""/settings (a user's personal defaults) and /history (their last images in this server).

Both answer privately. /history pages with Prev/Next buttons that carry who asked, whose images
and the page in their custom_id, so they keep working after a restart; only the person who asked
can turn the pages.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.app_commands import Choice, Range, locale_str
from discord.ext import commands

from bot import presets
from bot.errors import ImagineError
from bot.i18n import Text, t
from bot.storage.jobs import Job
from bot.storage.user_settings import SETTING_NAMES, UserDefaults
from bot.tree import report_error
from bot.ui import flow, render, suggest
from cogs.imagine import SIZE_CHOICES

if TYPE_CHECKING:
    from bot.app import ImagineBot

#: images per /history page
PAGE_SIZE = 5
CLEAR_CHOICES = [Choice(name=locale_str("all of them", key="choice.clear.all"), value="all")] + [
    Choice(name=locale_str(name, key=f"choice.clear.{name}"), value=name) for name in SETTING_NAMES
]


class Personal(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(HistoryPage)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(HistoryPage)

    async def _styles(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        return suggest.styles(current, flow.locale_of(interaction))

    @app_commands.command(name="settings", description="Your default style, size and options (empty: show them)")
    @app_commands.describe(
        style="Your default style",
        size="Your default image size",
        prompt_extend="Let the service expand your short prompts by default",
        watermark="Add the provider's watermark by default",
        private="Make your results private by default (only you see them)",
        clear="Forget one of your defaults, or all of them",
    )
    @app_commands.choices(size=SIZE_CHOICES, clear=CLEAR_CHOICES)
    @app_commands.autocomplete(style=_styles)
    async def settings(
        self,
        interaction: discord.Interaction,
        style: Range[str, 1, 100] | None = None,
        size: Choice[str] | None = None,
        prompt_extend: bool | None = None,
        watermark: bool | None = None,
        private: bool | None = None,
        clear: Choice[str] | None = None,
    ) -> None:
        assert self.bot.pipeline is not None
        store = self.bot.pipeline.user_settings
        changes = UserDefaults(
            style=presets.get_style(style).name if style is not None else None,  # an unknown style is refused
            size=presets.validate_size(size.value, self.bot.settings.image_sizes) if size is not None else None,
            prompt_extend=prompt_extend,
            watermark=watermark,
            private=private,
        )
        current = await store.get(interaction.user.id)
        cleared = () if clear is None else SETTING_NAMES if clear.value == "all" else (clear.value,)
        if cleared or not changes.empty:
            current = current.merged(changes, clear=cleared)
            await store.put(interaction.user.id, current)
        locale = flow.locale_of(interaction)
        await interaction.response.send_message(embed=settings_embed(current, locale), ephemeral=True)

    @app_commands.command(name="history", description="Your last images in this server")
    @app_commands.describe(user="Someone else's images (needs Manage Server)")
    async def history(self, interaction: discord.Interaction, user: discord.User | None = None) -> None:
        assert interaction.guild_id is not None
        target = user.id if user is not None else interaction.user.id
        if target != interaction.user.id and not interaction.permissions.manage_guild:
            raise ImagineError(Text("history.not_allowed"))
        embed, view = await history_page(self.bot, interaction, interaction.user.id, target, 0)
        await interaction.response.send_message(
            embed=embed, view=view, ephemeral=True, allowed_mentions=render.NO_PINGS
        )


def settings_embed(defaults: UserDefaults, locale: str) -> discord.Embed:
    embed = discord.Embed(title=t(locale, "settings.title"), colour=render.COLOUR)
    unset = t(locale, "settings.unset")
    for name in SETTING_NAMES:
        value = getattr(defaults, name)
        if value is None:
            shown = unset
        elif name == "style":
            shown = render.style_label(value, locale)
        elif name == "size":
            shown = render.size_label(value, locale)
        else:
            shown = t(locale, "common.on" if value else "common.off")
        embed.add_field(name=t(locale, f"settings.{name}"), value=shown)
    embed.set_footer(text=t(locale, "settings.footer"))
    return embed


async def history_page(
    bot: ImagineBot, interaction: discord.Interaction, owner: int, target: int, page: int
) -> tuple[discord.Embed, discord.ui.View]:
    """One page of `target`'s delivered images in this server, for `owner` (who turns the pages)."""
    assert interaction.guild_id is not None
    jobs = bot.service.jobs
    total = await jobs.history_count(interaction.guild_id, target)
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(max(page, 0), pages - 1)
    found = await jobs.history(interaction.guild_id, target, limit=PAGE_SIZE, offset=page * PAGE_SIZE)
    locale = flow.locale_of(interaction)
    embed = history_embed(found, target, owner, page, pages, total, locale)
    view = discord.ui.View(timeout=None)
    view.add_item(HistoryPage(owner, target, page - 1, "prev", locale, disabled=page == 0))
    view.add_item(HistoryPage(owner, target, page + 1, "next", locale, disabled=page >= pages - 1))
    return embed, view


def history_embed(
    jobs: list[Job], target: int, owner: int, page: int, pages: int, total: int, locale: str
) -> discord.Embed:
    title = t(locale, "history.title_yours") if target == owner else t(locale, "history.title_of", user=target)
    embed = discord.Embed(title=title, colour=render.COLOUR)
    if not jobs:
        embed.description = t(locale, "history.empty")
    for index, job in enumerate(jobs, start=page * PAGE_SIZE + 1):
        name = f"{index}. {render.style_label(job.style, locale)} · {render.size_label(job.size, locale)}"
        embed.add_field(name=name[:256], value=history_line(job, locale), inline=False)
    embed.set_footer(text=t(locale, "history.footer", page=page + 1, pages=pages, total=total))
    return embed


def history_line(job: Job, locale: str) -> str:
    """The prompt (trimmed), when (each reader's client shows it in their own time zone) and a link."""
    when = f"<t:{int(datetime.fromisoformat(job.finished_at or job.queued_at).timestamp())}:f>"
    message_id = job.result_message_id or job.message_id
    if job.private:
        where = t(locale, "history.private")  # an ephemeral message has no link anyone can open
    elif message_id is not None and job.channel_id is not None:
        link = f"https://discord.com/channels/{job.guild_id}/{job.channel_id}/{message_id}"
        where = t(locale, "history.jump", link=link)
    else:
        where = "—"
    return f"{render.quote(job.prompt, 120)}\n{when} · {where}"[:1024]


class HistoryPage(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"history:(?P<owner>\d+):(?P<target>\d+):(?P<page>-?\d+):(?P<direction>prev|next)",
):
    """Prev/Next under a /history page: `history:<who asked>:<whose images>:<page>:<direction>`."""

    def __init__(
        self, owner: int, target: int, page: int, direction: str, locale: str = "en", *, disabled: bool = False
    ) -> None:
        super().__init__(
            discord.ui.Button(
                label=t(locale, f"history.{direction}"),
                style=discord.ButtonStyle.secondary,
                custom_id=f"history:{owner}:{target}:{page}:{direction}",
                disabled=disabled,
            )
        )
        self.owner, self.target, self.page = owner, target, page

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> HistoryPage:
        return cls(int(match["owner"]), int(match["target"]), int(match["page"]), match["direction"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        try:
            if interaction.user.id != self.owner:  # only the person who asked turns the pages
                raise ImagineError(Text("history.not_yours"))
            embed, view = await history_page(interaction.client, interaction, self.owner, self.target, self.page)
            await interaction.response.edit_message(embed=embed, view=view, allowed_mentions=render.NO_PINGS)
        except Exception as error:  # the same boundary as the slash commands
            await report_error(interaction, error)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Personal(bot))
