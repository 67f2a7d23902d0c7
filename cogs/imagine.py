"""/imagine, /poster, /couplet, /queue and /usage, and the "Imagine this" message command.

Each command turns its options into a request with the pure builders (input is refused here,
before anything is spent) and hands it to the service, which admits it and only then has it
acknowledged publicly (bot/ui/flow.py); the reply message is then updated by the delivery as
the job moves. A refusal is answered privately by the error boundary (bot/tree.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import Choice, Range, locale_str
from discord.ext import commands

from bot import presets
from bot.errors import InvalidInput
from bot.i18n import Text
from bot.requests import POSTER_STYLES, GenerationRequest
from bot.storage.user_settings import UserDefaults
from bot.ui import flow, render, render_admin, suggest

if TYPE_CHECKING:
    from bot.app import ImagineBot

# Choice names carry their catalogue key: the translator names them in the reader's language.
SIZE_CHOICES = [
    Choice(name=locale_str(size.label, key=f"size.{size.value}"), value=size.value) for size in presets.SIZES
]
LANGUAGE_CHOICES = [
    Choice(name=locale_str("Chinese", key="choice.language.zh"), value="zh"),
    Choice(name=locale_str("English", key="choice.language.en"), value="en"),
]
FIELD = presets.FIELD_MAX_CHARS


def _value(choice: Choice[str] | None) -> str | None:
    return choice.value if choice is not None else None


class Imagine(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        # "Apps -> Imagine this" on a message: a context menu cannot be declared inside a cog, so it
        # is made here and added to the tree when the cog loads
        self._imagine_this = app_commands.ContextMenu(
            name=locale_str("Imagine this", key="cmd.imagine_this.name"), callback=self.imagine_this
        )

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self._imagine_this)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self._imagine_this.name, type=self._imagine_this.type)

    async def _defaults(self, interaction: discord.Interaction) -> UserDefaults:
        """The requester's /settings: below every option they give, above the style's and the server's."""
        assert self.bot.pipeline is not None
        return await self.bot.pipeline.user_settings.get(interaction.user.id)

    async def _start(self, interaction: discord.Interaction, request: GenerationRequest) -> None:
        await flow.start(self.bot.service, interaction, request)  # a refusal raises: the tree answers privately

    # -- autocomplete: Discord asks as the user types; at most 25 answers, each within 3 seconds ------
    async def _styles(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        return suggest.styles(current, flow.locale_of(interaction))

    async def _poster_styles(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        return suggest.styles(current, flow.locale_of(interaction), only=POSTER_STYLES)

    async def _negative_prompts(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        recent = await self.bot.service.jobs.recent_negative_prompts(
            str(interaction.user.id),
            exclude=suggest.STYLE_NEGATIVES,
            max_chars=suggest.MAX_CHARS,
            limit=suggest.MAX_CHOICES,
        )
        return suggest.negative_prompts(current, flow.locale_of(interaction), recent)

    @app_commands.command(name="imagine", description="Generate an image from a text prompt")
    @app_commands.describe(
        prompt="What to draw (Chinese and English text render well)",
        size="Image size (default 1:1 square)",
        style="A preset scenario (default: rapid creation)",
        negative_prompt="What to keep out of the image",
        prompt_extend="Let the service expand a short prompt (style decides by default)",
        watermark="Add the provider's watermark (style decides by default)",
        private="Only you see the result (the server may turn this off)",
        spoiler="Post the image as a spoiler",
    )
    @app_commands.choices(size=SIZE_CHOICES)
    @app_commands.autocomplete(style=_styles, negative_prompt=_negative_prompts)
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: Range[str, 1, 800],
        size: Choice[str] | None = None,
        style: Range[str, 1, 100] | None = None,
        negative_prompt: Range[str, 0, 500] | None = None,
        prompt_extend: bool | None = None,
        watermark: bool | None = None,
        private: bool | None = None,
        spoiler: bool | None = None,
    ) -> None:
        request = self.bot.requests.imagine(
            prompt,
            size=_value(size),
            style=style,
            negative_prompt=negative_prompt,
            prompt_extend=prompt_extend,
            watermark=watermark,
            private=private,
            spoiler=spoiler,
            defaults=await self._defaults(interaction),
        )
        await self._start(interaction, request)

    @app_commands.command(name="poster", description="Design a poster with a title (and a subtitle)")
    @app_commands.describe(
        title="The poster's title, rendered as text",
        subtitle="A subtitle, rendered as text",
        background="What the background shows",
        size="Image size (default 9:16 portrait)",
        style="A preset scenario (default: poster design)",
        watermark="Add the provider's watermark",
        language="The language of the poster's text (default: the title's); the text is kept exactly as written",
        private="Only you see the result (the server may turn this off)",
        spoiler="Post the image as a spoiler",
    )
    @app_commands.choices(size=SIZE_CHOICES, language=LANGUAGE_CHOICES)
    @app_commands.autocomplete(style=_poster_styles)
    async def poster(
        self,
        interaction: discord.Interaction,
        title: Range[str, 1, FIELD],
        subtitle: Range[str, 1, FIELD] | None = None,
        background: Range[str, 1, FIELD] | None = None,
        size: Choice[str] | None = None,
        style: Range[str, 1, 100] | None = None,
        watermark: bool | None = None,
        language: Choice[str] | None = None,
        private: bool | None = None,
        spoiler: bool | None = None,
    ) -> None:
        request = self.bot.requests.poster(
            title,
            subtitle,
            background,
            size=_value(size),
            style=style,
            watermark=watermark,
            language=_value(language),
            private=private,
            spoiler=spoiler,
            defaults=await self._defaults(interaction),
        )
        await self._start(interaction, request)

    @app_commands.command(name="couplet", description="Write a Chinese couplet in calligraphy")
    @app_commands.describe(
        left="The left scroll",
        right="The right scroll",
        horizontal="The horizontal scroll across the top",
        background="The background (default: red Xuan paper)",
        font="The calligraphy (default: regular script in gold)",
        size="Image size (default 3:4 portrait)",
        private="Only you see the result (the server may turn this off)",
        spoiler="Post the image as a spoiler",
    )
    @app_commands.choices(size=SIZE_CHOICES)
    async def couplet(
        self,
        interaction: discord.Interaction,
        left: Range[str, 1, FIELD],
        right: Range[str, 1, FIELD],
        horizontal: Range[str, 1, FIELD],
        background: Range[str, 1, FIELD] | None = None,
        font: Range[str, 1, FIELD] | None = None,
        size: Choice[str] | None = None,
        private: bool | None = None,
        spoiler: bool | None = None,
    ) -> None:
        request = self.bot.requests.couplet(
            left,
            right,
            horizontal,
            background,
            font,
            size=_value(size),
            private=private,
            spoiler=spoiler,
            defaults=await self._defaults(interaction),
        )
        await self._start(interaction, request)

    @app_commands.command(name="queue", description="This server's queue: running, waiting, your place")
    async def queue(self, interaction: discord.Interaction) -> None:
        status = self.bot.service.queue_status(flow.requester_of(interaction))
        embed = render.queue_embed(
            running=status.running,
            waiting=status.waiting,
            mine=status.mine,
            new_request_wait_s=status.new_request_wait_s,
            queue_max=self.bot.settings.guild_queue_max,
            locale=flow.locale_of(interaction),
        )
        await interaction.response.send_message(embed=embed, ephemeral=True, allowed_mentions=render.NO_PINGS)

    @app_commands.command(name="usage", description="Your images today and this month, and the server's budget")
    async def usage(self, interaction: discord.Interaction) -> None:
        usage = await self.bot.service.usage(flow.requester_of(interaction))
        embed = render_admin.usage_embed(usage, flow.locale_of(interaction))
        await interaction.response.send_message(embed=embed, ephemeral=True)

    async def imagine_this(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """An image from the text of the message it was used on: Discord sends that message with the
        interaction, so no message-content intent is needed. Mentions become plain names (nothing
        pings: every post has allowed_mentions none), and the prompt is screened like a typed one."""
        prompt = message.clean_content.strip()
        if not prompt:  # only an attachment, an embed or a sticker: nothing to draw from
            raise InvalidInput(Text("input.message_empty"), field="prompt")
        await self._start(interaction, self.bot.requests.imagine(prompt, command="imagine_this"))


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Imagine(bot))
