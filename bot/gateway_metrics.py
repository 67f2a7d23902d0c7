"""The Discord side's figures, under the names bot operators already chart (discord-ext-prometheus
and its Grafana dashboard 17670): discord_connected{shard}, discord_latency{shard},
discord_stat_total_guilds, and discord_event_on_interaction_total{shard,interaction,command}.

The gauges are read from the client when Prometheus scrapes, so they are never stale and need no
event handlers. Each process reports only the shards it runs (a pure worker: none).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import discord
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from discord.ext.commands import AutoShardedBot

#: our buttons' custom ids are `imagine:<action>:<job id>`: the action is the label, never the id
_OUR_BUTTON = re.compile(r"imagine:(\w+):\d+(?::\d+)?")  # a modal adds the opening interaction
#: actions the buttons have (cogs/results.py); any other custom id is counted as "other"
BUTTON_ACTIONS = frozenset({"reroll", "details", "delete", "cancel", "remix"})


class GatewayGauges(Collector):
    def __init__(self, bot: AutoShardedBot) -> None:
        self._bot = bot

    def collect(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily(
            "discord_connected", "Whether the shard's gateway connection is open (1) or not (0)", labels=["shard"]
        )
        latency = GaugeMetricFamily(
            "discord_latency", "Seconds between the shard's last heartbeat and its acknowledgement", labels=["shard"]
        )
        for shard_id, shard in sorted(self._bot.shards.items()):
            connected.add_metric([str(shard_id)], 0.0 if shard.is_closed() else 1.0)
            if math.isfinite(shard.latency):  # infinite until the first heartbeat is acknowledged
                latency.add_metric([str(shard_id)], shard.latency)
        yield connected
        yield latency
        yield GaugeMetricFamily(
            "discord_stat_total_guilds", "Servers this process's shards are in", value=len(self._bot.guilds)
        )


def interaction_labels(interaction: discord.Interaction) -> tuple[str, str]:
    """(interaction type, command) with bounded values: a command's qualified name (our commands
    only), a button's action, or "other"; never an id."""
    kind = interaction.type.name
    if interaction.type in (discord.InteractionType.application_command, discord.InteractionType.autocomplete):
        command = interaction.command
        return kind, command.qualified_name if command is not None else "unknown"
    custom_id = str((interaction.data or {}).get("custom_id", ""))
    match = _OUR_BUTTON.fullmatch(custom_id)
    return kind, match.group(1) if match and match.group(1) in BUTTON_ACTIONS else "other"
