"""LOG_FORMAT with a real bot process (`python -m bot run`, as in test_restart.py) against the fake
Discord and the fake image API: every line of its output is one JSON object under LOG_FORMAT=json,
and the key events carry their structured fields; text stays the default."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_API_KEY
from tests.discord.test_restart import PRICE_FEN, USERS, BotProcesses, job_rows
from tests.fakes.fake_discord import FakeDiscord, SentInteraction
from tests.fakes.image_api import FakeImageApi, Reply


@pytest.fixture
def bots(tmp_path: Path, fake_discord: FakeDiscord, fake_api: FakeImageApi) -> Iterator[BotProcesses]:
    processes = BotProcesses(tmp_path, fake_discord, fake_api)
    try:
        yield processes
    finally:
        processes.kill_all()


def finished(bots: BotProcesses, sent: SentInteraction) -> dict[str, Any]:
    return bots.discord.wait_for_sync(
        lambda _: (row := job_rows(bots.tmp_path).get(sent.id)) and row["state"] in ("delivered", "failed") and row,
        timeout=60,
    )


def run_three_requests(bots: BotProcesses, **env: str) -> tuple[SentInteraction, SentInteraction, SentInteraction]:
    """Delivered, failed (refused by the provider) and refused by the daily limit; then SIGTERM."""
    bots.api.script(Reply.ok(), Reply.content_rejected())
    bot = bots.start(USER_DAILY_LIMIT="1", **env)  # LOG_LEVEL=DEBUG: discord.py's lines too
    fake = bots.discord
    ok = fake.send_slash("imagine", {"prompt": "A lighthouse at dusk"}, user_id=USERS[0])
    finished(bots, ok)
    bad = fake.send_slash("imagine", {"prompt": "Something the provider refuses"}, user_id=USERS[1])
    finished(bots, bad)
    refused = fake.send_slash("imagine", {"prompt": "A second lighthouse"}, user_id=USERS[0])
    fake.wait_for_sync(lambda f: f.original_message(refused.id), timeout=30)
    bot.send_signal(signal.SIGTERM)  # a graceful stop: the refusal's record (and its log line) is written first
    assert bot.wait(timeout=40) == 0
    return ok, bad, refused


def test_json_logs_are_one_object_per_line_with_the_jobs_fields(bots: BotProcesses) -> None:
    ok, bad, refused = run_three_requests(bots, LOG_FORMAT="json")
    text = bots.log_text()
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line parses
    assert len(entries) > 20  # discord.py's own lines at DEBUG too
    assert all({"ts", "level", "logger", "message"} <= set(entry) for entry in entries)
    guild = bots.discord.guild_id
    ok_request, bad_request = (r.request_id for r in bots.api.requests)

    [delivered] = [e for e in entries if e.get("job_id") == ok.id and e.get("state") == "delivered"]
    assert delivered["message"] == f"job {ok.id} delivered"
    assert (delivered["guild_id"], delivered["user_id"]) == (guild, USERS[0])
    assert (delivered["cost_fen"], delivered["request_id"]) == (PRICE_FEN, ok_request)
    assert isinstance(delivered["latency_ms"], int) and delivered["latency_ms"] >= 0

    states = [e["state"] for e in entries if e.get("job_id") == ok.id]
    assert states == ["queued", "submitting", "delivered"]

    [failed] = [e for e in entries if e.get("job_id") == bad.id and e.get("state") == "failed"]
    assert failed["level"] == "WARNING" and failed["message"].startswith(f"job {bad.id} failed: ContentRejected")
    assert (failed["guild_id"], failed["user_id"], failed["cost_fen"]) == (guild, USERS[1], 0)
    assert failed["request_id"] == bad_request

    [refusal] = [e for e in entries if e.get("state") == "refused"]
    assert (refusal["guild_id"], refusal["user_id"]) == (guild, USERS[0])
    assert refusal["message"] == f"request of {USERS[0]} refused (user_day)"
    assert "job_id" not in refusal  # a refused request never became a job

    assert_no_secret(bots, text, ok, bad, refused)


def test_text_stays_the_default(bots: BotProcesses) -> None:
    sent = run_three_requests(bots)
    text = bots.log_text()
    lines = [line for line in text.splitlines() if line.strip()]
    assert any(line.endswith(f"INFO    imagine.service: job {sent[0].id} delivered") for line in lines)
    for line in lines:
        with pytest.raises(ValueError):
            json.loads(line)
    assert_no_secret(bots, text, *sent)


def assert_no_secret(bots: BotProcesses, text: str, *sent: SentInteraction) -> None:
    """Not the bot token, the API key, nor any interaction's token (at DEBUG, too)."""
    for secret in (bots.discord.bot_token, TEST_API_KEY, *(one.token for one in sent)):
        assert secret not in text
