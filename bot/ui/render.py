"""What the bot's messages look like: status lines, the result embed, details, the queue.

Pure functions of the job (and its numbers) to text, embeds and allowed-mentions values, so
every message is built in one place and tests can read them back from the fake Discord.
"""

from __future__ import annotations

from datetime import datetime

import discord

from bot import messages
from bot.i18n import DEFAULT, Number, Text, has, money, t
from bot.presets import STYLES, couplet_lengths
from bot.scheduler import QueuePosition
from bot.storage.jobs import Job

#: Every message that echoes user text pings nobody ("@everyone" in a prompt stays text).
NO_PINGS = discord.AllowedMentions.none()
COLOUR = discord.Colour.from_rgb(255, 122, 69)
FAILURE_COLOUR = discord.Colour.red()

DM_ONLY_TEXT = Text("reply.dm_only")
NOT_ALLOWED_TO_DELETE = Text("reply.not_allowed_to_delete")
JOB_GONE = Text("reply.job_gone")
NOT_ALLOWED_TO_CANCEL = Text("reply.not_allowed_to_cancel")
#: what the Cancel button answers when it comes too late, by the service's outcome
CANCEL_REFUSED = {"started": Text("reply.cancel_started"), "finished": Text("reply.cancel_finished")}


def requester_only(user_id: int) -> discord.AllowedMentions:
    """The one deliberate ping: the requester, when a result is posted as a channel message."""
    return discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(user_id)], replied_user=False)


def size_label(value: str, locale: str = DEFAULT) -> str:
    """A size as people read it ("1:1 square 1328×1328"); the value itself for sizes an operator added."""
    return t(locale, f"size.{value}") if has(f"size.{value}") else value


def style_label(name: str | None, locale: str = DEFAULT) -> str:
    return t(locale, f"style.{name}") if name in STYLES else (name or "—")


def about(seconds: float, locale: str = DEFAULT) -> str:
    if seconds < 60:
        return t(locale, "time.about_seconds", seconds=max(5, round(seconds / 5) * 5))
    return t(locale, "time.about_minutes", minutes=Number(round(seconds / 60)))


def quote(text: str, limit: int = 300) -> str:
    short = text if len(text) <= limit else text[: limit - 1] + "…"
    return "> " + short.replace("\n", " ")


def couplet_warning(job: Job, locale: str = DEFAULT) -> str | None:
    """A couplet whose two scrolls differ in length is made anyway, with a word about it."""
    lengths = couplet_lengths(job.inputs) if job.command in ("couplet", "reroll") else None
    if lengths is None:
        return None
    return t(locale, "status.couplet_lengths", left=lengths[0], right=lengths[1])


def _with_warning(text: str, job: Job, locale: str) -> str:
    warning = couplet_warning(job, locale)
    return f"{text}\n{warning}" if warning else text


def queued_text(job: Job, position: QueuePosition, locale: str = DEFAULT) -> str:
    line = t(locale, "status.queued", position=position.guild_position, wait=about(position.eta_s, locale))
    return _with_warning(f"{line}\n{quote(job.prompt)}", job, locale)


def generating_text(job: Job, locale: str = DEFAULT) -> str:
    line = t(locale, "status.generating", size=size_label(job.size, locale))
    return _with_warning(f"{line}\n{quote(job.prompt)}", job, locale)


def cancelled_text(locale: str = DEFAULT) -> str:
    return t(locale, "status.cancelled")


def failure_text(error: BaseException, job: Job | None = None, locale: str = DEFAULT) -> str:
    text = f"❌ {messages.describe(error, locale)}"
    request_id = getattr(error, "request_id", None)
    if request_id:
        text += "\n" + t(locale, "status.reference", request_id=request_id)
    if job is not None:
        text += f"\n{quote(job.prompt, 200)}"
    return text


def image_filename(job: Job, extension: str) -> str:
    """A spoiler's file name starts with SPOILER_: that is how Discord marks an attachment as one."""
    return f"{'SPOILER_' if job.spoiler else ''}imagine-{job.id}.{extension}"


def _seconds_between(start: str | None, end: datetime) -> float | None:
    if not start:
        return None
    return max(0.0, (end - datetime.fromisoformat(start)).total_seconds())


def result_embed(job: Job, filename: str, now: datetime, locale: str = DEFAULT) -> discord.Embed:
    kind = job.command if job.command in ("poster", "couplet", "reroll") else "image"
    embed = discord.Embed(title=t(locale, f"embed.title_{kind}"), description=job.prompt[:4000], colour=COLOUR)
    if job.revised_prompt:
        embed.add_field(name=t(locale, "embed.revised_prompt"), value=job.revised_prompt[:1024], inline=False)
    embed.add_field(name=t(locale, "embed.size"), value=size_label(job.size, locale))
    embed.add_field(name=t(locale, "embed.style"), value=style_label(job.style, locale))
    embed.add_field(name=t(locale, "embed.cost"), value=money(locale, job.upstream_fen))
    took = _seconds_between(job.queued_at, now)
    if took is not None:
        embed.add_field(name=t(locale, "embed.time"), value=t(locale, "embed.seconds", seconds=f"{took:.1f}"))
    if job.cache_hit:
        embed.add_field(name=t(locale, "embed.from_cache"), value=t(locale, "embed.from_cache_value"), inline=False)
    if warning := couplet_warning(job, locale):
        embed.add_field(name=t(locale, "embed.note"), value=warning, inline=False)
    if not job.spoiler:  # an embed shows its image uncovered: a spoiler is only the (covered) attachment
        embed.set_image(url=f"attachment://{filename}")
    requester = f"<@{job.user_id}>" if job.user_id else job.requester
    embed.set_footer(text=t(locale, "embed.footer_job", id=job.id))
    embed.add_field(name=t(locale, "embed.requested_by"), value=requester)
    return embed


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _on_off(value: bool, locale: str) -> str:
    return t(locale, "common.on" if value else "common.off")


def _sourced(job: Job, name: str, value: str, locale: str) -> str:
    """A value with where it came from (the option, your /settings, the style, the server's default)."""
    source = job.sources.get(name)
    if source is None or not has(f"source.{source}"):
        return value  # a job from before sources were recorded
    return t(locale, "details.with_source", value=value, source=t(locale, f"source.{source}"))


def details_embed(job: Job, locale: str = DEFAULT) -> discord.Embed:
    embed = discord.Embed(title=t(locale, "details.title", id=job.id), colour=COLOUR)
    # a prompt the bot built from fields (/poster, /couplet) is shown so people can learn to write their own
    prompt_name = "details.prompt_built" if job.inputs else "details.prompt"
    embed.add_field(name=t(locale, prompt_name), value=job.prompt[:1024], inline=False)
    if job.negative_prompt:
        embed.add_field(name=t(locale, "details.negative_prompt"), value=job.negative_prompt[:1024], inline=False)
    if job.revised_prompt:
        embed.add_field(name=t(locale, "embed.revised_prompt"), value=job.revised_prompt[:1024], inline=False)
    for name, value in job.inputs.items():
        label = t(locale, f"field.{name}") if has(f"field.{name}") else name.replace("_", " ")
        embed.add_field(name=_capitalised(label), value=str(value)[:1024])
    embed.add_field(name=t(locale, "details.command"), value=f"/{job.command}")
    embed.add_field(name=t(locale, "embed.style"), value=_sourced(job, "style", job.style or "—", locale))
    embed.add_field(name=t(locale, "embed.size"), value=_sourced(job, "size", size_label(job.size, locale), locale))
    extend = _on_off(job.prompt_extend, locale)
    embed.add_field(name=t(locale, "details.prompt_extend"), value=_sourced(job, "prompt_extend", extend, locale))
    watermark = _on_off(job.watermark, locale)
    embed.add_field(name=t(locale, "details.watermark"), value=_sourced(job, "watermark", watermark, locale))
    if job.private or "private" in job.sources:
        private = _on_off(job.private, locale)
        embed.add_field(name=t(locale, "details.private"), value=_sourced(job, "private", private, locale))
    embed.add_field(name=t(locale, "details.model"), value=job.model)
    embed.add_field(name=t(locale, "details.state"), value=t(locale, f"state.{job.state}"))
    embed.add_field(name=t(locale, "embed.cost"), value=money(locale, job.cost_fen))
    request_id = f"`{job.request_id}`" if job.request_id else "—"
    embed.add_field(name=t(locale, "details.request_id"), value=request_id, inline=False)
    if job.reroll_of:
        embed.add_field(name=t(locale, "details.reroll_of"), value=t(locale, "embed.footer_job", id=job.reroll_of))
    if job.error_message:
        embed.add_field(name=t(locale, "details.error"), value=job.error_message[:1024], inline=False)
    return embed


def queue_embed(
    *,
    running: int,
    waiting: int,
    mine: list[QueuePosition],
    new_request_wait_s: float,
    queue_max: int,
    locale: str = DEFAULT,
) -> discord.Embed:
    embed = discord.Embed(title=t(locale, "queue.title"), colour=COLOUR)
    embed.add_field(name=t(locale, "queue.generating"), value=str(running))
    embed.add_field(name=t(locale, "queue.waiting"), value=f"{waiting} / {queue_max}")
    if mine:
        places = ", ".join(f"#{p.guild_position} ({about(p.eta_s, locale)})" for p in mine)
        embed.add_field(name=t(locale, "queue.yours"), value=places, inline=False)
    else:
        embed.add_field(name=t(locale, "queue.yours"), value=t(locale, "queue.none_waiting"), inline=False)
    embed.add_field(name=t(locale, "queue.new_request"), value=about(new_request_wait_s, locale), inline=False)
    return embed
