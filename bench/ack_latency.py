"""Benchmark: how fast a slash command is acknowledged under load (Discord's 3-second rule).

A burst of /imagine interactions at a steady rate, each from a different user, while the
upstream is slow (every job stays queued or generating, so the queue, the store and the
position updates all work during the burst). Measured: from just before the interaction is
pushed to the moment the fake Discord records the bot's first answer (the deferred "thinking"
message, or a private refusal), on the fake's clock.

Baseline in the same run: a bare discord.py bot whose /imagine only defers. The difference is
what imagine-bot adds before the acknowledgement. The fakes run in their own processes.

    .venv/bin/python -m bench.ack_latency [--requests 200] [--rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import discord
import yarl
from discord.ext import commands

from bench.harness import bench_settings, http, start


class BareBot(commands.Bot):
    """The baseline: the same client and intents, a command that only defers."""

    def __init__(self) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, guild_ready_timeout=0.05)

        @self.tree.command(name="imagine", description="defer only")
        async def imagine(interaction: discord.Interaction, prompt: str) -> None:
            await interaction.response.defer(thinking=True)


def push_burst(control: str, requests: int, rate: float) -> dict[str, float]:
    """Push at a steady rate (from a worker thread); returns interaction id -> push time."""
    pushed: dict[str, float] = {}
    interval = 1.0 / rate
    begin = time.monotonic()
    for i in range(requests):
        delay = begin + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        at = time.time()
        sent = http(
            "POST", control + "/slash", {"name": "imagine", "options": {"prompt": f"p {i}"}, "user_id": 5000 + i}
        )
        pushed[sent["id"]] = at  # type: ignore[index]
    return pushed


async def measure(bot: commands.Bot, control: str, requests: int, rate: float) -> list[float]:
    runner = asyncio.create_task(bot.start("fake-bot-token"))
    try:
        for _ in range(1000):
            if bot.is_ready():
                break
            await asyncio.sleep(0.01)
        pushed = await asyncio.to_thread(push_burst, control, requests, rate)  # off the bot's loop
        answered: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while len(answered) < len(pushed) and time.monotonic() < deadline:
            for message in await asyncio.to_thread(http, "GET", control + "/messages"):  # type: ignore[union-attr]
                key = message["interaction_id"]
                if key in pushed and key not in answered:
                    answered[key] = message["created_at"]
            await asyncio.sleep(0.1)
        return [answered[key] - pushed[key] for key in pushed if key in answered] + [
            float("inf") for key in pushed if key not in answered
        ]
    finally:
        await bot.close()
        await asyncio.gather(runner, return_exceptions=True)


async def phase(make_bot, requests: int, rate: float) -> list[float]:
    discord_proc, (api_base, gateway) = start("tests.fakes.fake_discord", marker="FAKE_DISCORD")
    image_proc, (image_base,) = start("tests.fakes.image_api", "--latency", "5", marker="FAKE_IMAGE_API")
    discord.http.Route.BASE = api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)
    try:
        return await measure(make_bot(image_base), api_base.split("/api/")[0] + "/_control", requests, rate)
    finally:
        for process in (discord_proc, image_proc):
            process.terminate()
            process.wait()


def imagine_bot(image_base: str) -> commands.Bot:
    from bot.app import ImagineBot

    settings = bench_settings(image_base, guild_queue_max=1000)
    return ImagineBot(settings, guild_ready_timeout=0.05)


def row(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    late = sum(1 for s in samples if s > 3.0)
    return (
        f"{name:<30}{len(samples):>5}{statistics.median(samples) * 1000:>10.1f}{p99 * 1000:>10.1f}"
        f"{ordered[-1] * 1000:>10.1f}{late:>8}"
    )


async def run(requests: int, rate: float) -> None:
    bare = await phase(lambda _: BareBot(), requests, rate)
    ours = await phase(imagine_bot, requests, rate)
    print(f"acknowledgement latency, {requests} /imagine at {rate:g}/s, slow upstream (ms)")
    print(f"{'':<30}{'n':>5}{'median':>10}{'p99':>10}{'max':>10}{'>3 s':>8}")
    print(row("bare discord.py defer (base)", bare))
    print(row("imagine-bot", ours))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0)
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.rate))


if __name__ == "__main__":
    main()
