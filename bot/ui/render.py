"""What the bot's messages look like: status lines, the result embed, details, the queue.

Pure functions of the job (and its numbers) to text, embeds and allowed-mentions values, so
every message is built in one place and tests can read them back from the fake Discord.
"""

from __future__ import annotations

from datetime import datetime

import discord

from bot import messages
from bot.money import format_cny
from bot.presets import STYLES, size_label
from bot.scheduler import QueuePosition
from bot.storage.jobs import Job

#: Every message that echoes user text pings nobody ("@everyone" in a prompt stays text).
NO_PINGS = discord.AllowedMentions.none()
COLOUR = discord.Colour.from_rgb(255, 122, 69)
FAILURE_COLOUR = discord.Colour.red()

DM_ONLY_TEXT = (
    "imagine-bot works inside servers: each server has its own queue and limits. "
    "Use the commands in a channel of a server the bot is in."
)
NOT_ALLOWED_TO_DELETE = "Only the person who asked for this image, or someone with Manage Messages, can delete it."
JOB_GONE = "This image's record is no longer available."


def requester_only(user_id: int) -> discord.AllowedMentions:
    """The one deliberate ping: the requester, when a result is posted as a channel message."""
    return discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(user_id)], replied_user=False)


def about(seconds: float) -> str:
    if seconds < 60:
        return f"about {max(5, round(seconds / 5) * 5)} s"
    return f"about {round(seconds / 60)} min"


def quote(text: str, limit: int = 300) -> str:
    short = text if len(text) <= limit else text[: limit - 1] + "…"
    return "> " + short.replace("\n", " ")


def queued_text(job: Job, position: QueuePosition) -> str:
    place = f"#{position.guild_position} in this server, {about(position.eta_s)}"
    return f"⏳ **Queued:** {place}.\n{quote(job.prompt)}"


def generating_text(job: Job) -> str:
    return f"🎨 **Generating…** {size_label(job.size)}\n{quote(job.prompt)}"


def failure_text(error: BaseException, job: Job | None = None) -> str:
    text = f"❌ {messages.describe(error)}"
    request_id = getattr(error, "request_id", None)
    if request_id:
        text += f"\nReference: `{request_id}`"
    if job is not None:
        text += f"\n{quote(job.prompt, 200)}"
    return text


def image_filename(job: Job, extension: str) -> str:
    return f"imagine-{job.id}.{extension}"


def _seconds_between(start: str | None, end: datetime) -> float | None:
    if not start:
        return None
    return max(0.0, (end - datetime.fromisoformat(start)).total_seconds())


def result_embed(job: Job, filename: str, now: datetime) -> discord.Embed:
    title = {"poster": "Poster", "couplet": "Couplet", "reroll": "Reroll"}.get(job.command, "Image")
    embed = discord.Embed(title=title, description=job.prompt[:4000], colour=COLOUR)
    if job.revised_prompt:
        embed.add_field(name="Revised prompt", value=job.revised_prompt[:1024], inline=False)
    embed.add_field(name="Size", value=size_label(job.size))
    embed.add_field(name="Style", value=STYLES[job.style].label if job.style in STYLES else (job.style or "—"))
    embed.add_field(name="Cost", value=format_cny(job.upstream_fen))
    took = _seconds_between(job.queued_at, now)
    if took is not None:
        embed.add_field(name="Time", value=f"{took:.1f} s")
    if job.cache_hit:
        embed.add_field(
            name="From cache", value="the same request was made before; Reroll for a new image", inline=False
        )
    embed.set_image(url=f"attachment://{filename}")
    requester = f"<@{job.user_id}>" if job.user_id else job.requester
    embed.set_footer(text=f"job {job.id}")
    embed.add_field(name="Requested by", value=requester)
    return embed


def details_embed(job: Job) -> discord.Embed:
    embed = discord.Embed(title=f"Details of job {job.id}", colour=COLOUR)
    embed.add_field(name="Prompt", value=job.prompt[:1024], inline=False)
    if job.negative_prompt:
        embed.add_field(name="Negative prompt", value=job.negative_prompt[:1024], inline=False)
    if job.revised_prompt:
        embed.add_field(name="Revised prompt", value=job.revised_prompt[:1024], inline=False)
    for name, value in job.inputs.items():
        embed.add_field(name=name.replace("_", " ").capitalize(), value=str(value)[:1024])
    embed.add_field(name="Command", value=f"/{job.command}")
    embed.add_field(name="Style", value=job.style or "—")
    embed.add_field(name="Size", value=size_label(job.size))
    embed.add_field(name="Prompt extend", value="on" if job.prompt_extend else "off")
    embed.add_field(name="Watermark", value="on" if job.watermark else "off")
    embed.add_field(name="Model", value=job.model)
    embed.add_field(name="State", value=job.state)
    embed.add_field(name="Cost", value=format_cny(job.cost_fen))
    embed.add_field(name="Request id", value=f"`{job.request_id}`" if job.request_id else "—", inline=False)
    if job.reroll_of:
        embed.add_field(name="Reroll of", value=f"job {job.reroll_of}")
    if job.error_message:
        embed.add_field(name="Error", value=job.error_message[:1024], inline=False)
    return embed


def queue_embed(
    *, running: int, waiting: int, mine: list[QueuePosition], new_request_wait_s: float, queue_max: int
) -> discord.Embed:
    embed = discord.Embed(title="This server's queue", colour=COLOUR)
    embed.add_field(name="Generating", value=str(running))
    embed.add_field(name="Waiting", value=f"{waiting} / {queue_max}")
    if mine:
        places = ", ".join(f"#{p.guild_position} ({about(p.eta_s)})" for p in mine)
        embed.add_field(name="Your requests", value=places, inline=False)
    else:
        embed.add_field(name="Your requests", value="none waiting", inline=False)
    embed.add_field(name="A new request would start in", value=about(new_request_wait_s), inline=False)
    return embed
