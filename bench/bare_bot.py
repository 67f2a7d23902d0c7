"""The baseline of bench/ack_latency: a bare discord.py bot whose /imagine only defers, run as a
process of its own like the bot it is compared with.

    python -m bench.bare_bot API_BASE GATEWAY_URL
"""

from __future__ import annotations

import sys

import discord
import yarl
from discord.ext import commands


class BareBot(commands.Bot):
    """The same client and intents as imagine-bot, a command that only defers."""

    def __init__(self) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, guild_ready_timeout=0.05)

        @self.tree.command(name="imagine", description="defer only")
        async def imagine(interaction: discord.Interaction, prompt: str) -> None:
            await interaction.response.defer(thinking=True)


def main() -> None:
    api_base, gateway = sys.argv[1:3]
    discord.http.Route.BASE = api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)
    BareBot().run("fake-bot-token", log_handler=None)


if __name__ == "__main__":
    main()
