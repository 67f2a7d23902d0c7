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


def test_the_status_speaks_the_admins_language() -> None:
    status = GuildStatus(
        uptime_s=3725,
        started_at=datetime(2026, 3, 8, 7, 0, tzinfo=UTC),
        shared_queue=True,
        queue=QueueFigures(waiting=3, running=1, queue_max=25, oldest_wait_s=61, new_request_wait_s=12.0),
        upstream=UpstreamFigures(OutcomeCounts(), OutcomeCounts(ok=3, refused=1), 12.5, 1, 2, 4, 60),
        spend=SpendFigures(180, 1000, datetime(2026, 3, 11, tzinfo=UTC), "Asia/Shanghai"),
    )
    embed = status_embed(status, "…", "zh_Hans").to_dict()
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert embed["title"] == "imagine-bot 状态"
    assert fields["运行时间"].startswith("1 小时 2 分钟（自 <t:")
    assert fields["本服务器的队列"].split("\n")[1] == "等待最久的已等 1 分 1 秒"
    assert "暂停：剩余 13 秒" in fields["上游服务"]
    assert fields["本服务器今日花费"].startswith("已花费 ¥1.80，")
    assert "所有机器人进程" in embed["footer"]["text"]
    traditional = status_embed(status, "…", "zh_Hant").to_dict()
    assert traditional["title"] == "imagine-bot 狀態"
