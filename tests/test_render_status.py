"""The /imagine-admin status embed's wording where the end-to-end test does not go: no budget,
no pause, nobody waiting, long durations."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.status import GuildStatus, QueueFigures, SpendFigures, UpstreamFigures
from bot.ui.render_admin import duration, status_embed
from bot.upstream_health import OutcomeCounts


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (59.9, "59 s"), (61, "1 min 1 s"), (3725, "1 h 2 min"), (90_061, "1 d 1 h"), (-3, "0 s")],
)
def test_durations_show_their_two_largest_units(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_an_idle_server_without_a_budget() -> None:
    status = GuildStatus(
        uptime_s=2 * 86_400 + 5 * 3600,
        started_at=datetime(2026, 3, 8, 7, 0, tzinfo=UTC),
        shared_queue=False,
        queue=QueueFigures(waiting=0, running=0, queue_max=25, oldest_wait_s=None, new_request_wait_s=0.0),
        upstream=UpstreamFigures(OutcomeCounts(), OutcomeCounts(ok=3, refused=1), 0.0, 0, 2, 0, 60),
        spend=SpendFigures(0, None, datetime(2026, 3, 11, tzinfo=UTC), "UTC"),
    )
    embed = status_embed(status, "shard 0 of 1 in this process; this server is on shard 0").to_dict()
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Uptime"].startswith("2 d 5 h (since <t:")
    assert fields["This server's queue"] == (
        "0 waiting (at most 25), 0 generating or delivering\nnobody waiting\na new request would start in 0 s"
    )
    assert fields["Upstream"].split("\n")[2:4] == [
        "answered: 0 in the last hour, 3 in 24 h (1 refused as bad requests in 24 h)",
        "paused: no",
    ]
    assert fields["Spent here today"].startswith("¥0.00 spent, no cap (")
    assert embed["footer"]["text"] == "Uptime and upstream: this bot process."
