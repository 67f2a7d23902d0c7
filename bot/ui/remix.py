"""The Remix form: a modal pre-filled with what a result was made from (bot/requests.py: remix_values).

Submitting it goes through the same start as a slash command (bot/ui/flow.py): admitted first
(input, moderation, limits, budget, queue room), then acknowledged publicly as a new message, or
refused privately. The modal lives in discord.py's store only while it is open (15 minutes): its
custom_id carries the job id and the opening interaction's id, so two people remixing the same
image each get their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord

from bot import presets
from bot.i18n import Text, t
from bot.requests import remix_values
from bot.storage.jobs import Job
from bot.tree import report_error
from bot.ui import flow

if TYPE_CHECKING:
    from bot.app import ImagineBot

#: Discord keeps a modal open at most this long anyway
OPEN_FOR_S = 900.0
#: fields that must not be blank (the command's required options)
REQUIRED = frozenset({"prompt", "title", "left", "right", "horizontal"})
#: Discord's limits: a modal title and a text input's label
TITLE_MAX, LABEL_MAX, INPUT_MAX = 45, 45, 4000


class RemixModal(discord.ui.Modal):
    def __init__(self, bot: ImagineBot, job: Job, locale: str, opened_by: int) -> None:
        super().__init__(
            title=t(locale, "remix.title")[:TITLE_MAX],
            custom_id=f"imagine:remix:{job.id}:{opened_by}",
            timeout=OPEN_FOR_S,
        )
        self._bot = bot
        self._job = job
        self._inputs: dict[str, discord.ui.TextInput[Any]] = {}
        for name, value in remix_values(job).items():
            longest = self._max_chars(name)
            text_input: discord.ui.TextInput[Any] = discord.ui.TextInput(
                label=_label(name, locale),
                custom_id=name,
                style=discord.TextStyle.paragraph if name in ("prompt", "negative_prompt") else discord.TextStyle.short,
                default=value[:longest] or None,
                required=name in REQUIRED,
                max_length=longest,
            )
            self.add_item(text_input)
            self._inputs[name] = text_input

    def _max_chars(self, name: str) -> int:
        settings = self._bot.settings
        if name == "prompt":
            return min(settings.prompt_max_chars, INPUT_MAX)
        if name == "negative_prompt":
            return min(settings.negative_prompt_max_chars, INPUT_MAX)
        return presets.FIELD_MAX_CHARS

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        values = {name: text_input.value for name, text_input in self._inputs.items()}
        request = self._bot.requests.remix(self._job, values)  # invalid input raises: refused privately
        await flow.start(self._bot.service, interaction, request)

    async def on_error(self, interaction: discord.Interaction[Any], error: Exception) -> None:
        await report_error(interaction, error)  # the same boundary as the slash commands


def _label(name: str, locale: str) -> str:
    label = presets.field_name(name)
    return (label.render(locale) if isinstance(label, Text) else label)[:LABEL_MAX]
