"""Restart recovery with real processes: `python -m bot run` against the fake Discord and the fake
image API (both in this test process), the same SQLite file across starts.

One bot is SIGKILLed mid-queue and another is started in its place; one is stopped with SIGTERM.
Each bot's stderr (LOG_LEVEL=DEBUG) goes to a file that must never show the bot token or the API key.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import TEST_API_KEY, env_for
from tests.fakes.fake_discord import FakeDiscord, SentInteraction
from tests.fakes.image_api import FakeImageApi, RecordedRequest

LATENCY_S = 0.5  # each generation: slow enough to catch one in flight, short enough for a quick test
USERS = (111111111111111111, 222222222222222222, 333333333333333333)
PRICE_FEN = 18


@dataclass
class BotProcesses:
    """Starts `python -m bot run` processes; the fixture kills whatever is still running at the end."""

    tmp_path: Path
    discord: FakeDiscord
    api: FakeImageApi
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return env_for(
            {
                "DISCORD_TOKEN": self.discord.bot_token,
                "DISCORD_API_BASE": self.discord.api_base,
                "DISCORD_GATEWAY_URL": self.discord.gateway_url,
                "NEBULA_API_KEY": TEST_API_KEY,
                "NEBULA_BASE_URL": self.api.base_url,
                "DATABASE_URL": f"sqlite:///{self.tmp_path / 'imagine.db'}",
                "CACHE_DIR": str(self.tmp_path / "cache"),
                "UPSTREAM_CONCURRENCY": "1",
                "UPSTREAM_RPM": "6000",
                "USER_PENDING_MAX": "2",
                "GUILD_QUEUE_MAX": "25",
                "SHUTDOWN_GRACE_S": "20",
                "LOG_LEVEL": "DEBUG",
            }
        )

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        """Start a bot and wait until it has identified with the fake gateway and got its guilds."""
        identifies = self.discord.identify_count
        log = self.tmp_path / f"bot-{len(self.logs)}.stderr"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bot", "run"],
                cwd=self.tmp_path,
                env={**self.env(), **env},
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        self.running.append(proc)
        self.logs.append(log)

        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the bot exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                self.discord.wait_ready_sync(timeout=0.5, min_identifies=identifies + 1)
                return proc
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    def log_text(self) -> str:
        return "\n".join(log.read_text(errors="replace") for log in self.logs)

    def kill_all(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def bots(tmp_path: Path, fake_discord: FakeDiscord, fake_api: FakeImageApi) -> Iterator[BotProcesses]:
    fake_api.latency_s = LATENCY_S
    processes = BotProcesses(tmp_path, fake_discord, fake_api)
    try:
        yield processes
    finally:
        processes.kill_all()


# -- helpers -----------------------------------------------------------------------------------------
def job_rows(tmp_path: Path) -> dict[int, dict]:
    """The job rows, read with a connection of our own (WAL: the bot may be writing)."""
    path = tmp_path / "imagine.db"
    if not path.exists():
        return {}
    db = sqlite3.connect(path, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        found = db.execute("SELECT * FROM jobs").fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return {}
    finally:
        db.close()
    return {row["id"]: dict(row) for row in found}


def push_jobs(fake: FakeDiscord, users: int, per_user: int = 2) -> list[SentInteraction]:
    """Slash commands from several users, interleaved, each with its own prompt."""
    return [
        fake.send_slash("imagine", {"prompt": f"Lighthouse {n} of user {u}"}, user_id=USERS[u])
        for n in range(per_user)
        for u in range(users)
    ]


def in_flight(api: FakeImageApi) -> list[RecordedRequest]:
    return [r for r in api.requests if r.status is None]


def image_edits(fake: FakeDiscord, sent: SentInteraction) -> list[dict]:
    message = fake.original_message(sent.id)
    assert message is not None, f"interaction {sent.id} has no reply"
    return [entry for entry in message.history if entry["op"] == "edit" and entry["files"]]


def wait_until_all(bots: BotProcesses, sent: list[SentInteraction], states: tuple[str, ...]) -> dict:
    def done(_: FakeDiscord) -> dict | None:
        rows = job_rows(bots.tmp_path)
        ready = len(rows) == len(sent) and all(row["state"] in states for row in rows.values())
        return rows if ready else None

    return bots.discord.wait_for_sync(done, timeout=60)


def assert_no_secret_in_logs(bots: BotProcesses) -> None:
    text = bots.log_text()
    assert "imagine.service" in text  # the bots did log (at DEBUG)
    assert bots.discord.bot_token not in text
    assert TEST_API_KEY not in text


# -- the tests --------------------------------------------------------------------------------------
def test_a_killed_bot_is_replaced_and_every_job_is_delivered_exactly_once(
    bots: BotProcesses, fake_discord: FakeDiscord, fake_api: FakeImageApi
) -> None:
    first = bots.start()
    sent = push_jobs(fake_discord, users=3)  # 6 jobs from 3 users

    def mid_queue(_: FakeDiscord) -> RecordedRequest | None:
        """1-2 jobs fully delivered (in the store), the next one in flight upstream, the rest queued."""
        rows = job_rows(bots.tmp_path)
        delivered = sum(1 for row in rows.values() if row["state"] == "delivered")
        flying = in_flight(fake_api)
        if len(rows) == len(sent) and 1 <= delivered <= 2 and fake_api.generation_count == delivered:
            return flying[0] if flying else None
        return None

    caught = fake_discord.wait_for_sync(mid_queue, timeout=60)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    before = job_rows(bots.tmp_path)
    assert any(row["state"] == "queued" for row in before.values())  # killed mid-queue indeed

    bots.start()
    rows = wait_until_all(bots, sent, ("delivered", "failed"))

    assert {row["state"] for row in rows.values()} == {"delivered"}
    assert all(row["interaction_token"] is None for row in rows.values())
    assert all(row["cost_fen"] == PRICE_FEN for row in rows.values())
    for one in sent:
        [edit] = image_edits(fake_discord, one)  # exactly one image per reply, none twice
        assert edit["files"] == [f"imagine-{one.id}.png"]
    # The job caught mid-request was resubmitted once; every other job was asked for exactly once.
    interrupted = [row for row in rows.values() if row["prompt"] == caught.json["prompt"]]
    assert [row["attempts"] for row in interrupted] == [2]
    assert sorted(row["attempts"] for row in rows.values()) == [1, 1, 1, 1, 1, 2]
    prompts = [r.json["prompt"] for r in fake_api.requests]
    assert len(prompts) == len(sent) + 1 and prompts.count(caught.json["prompt"]) == 2
    # The lost request may still have been billed upstream: at most one generation more than jobs.
    assert len(sent) <= fake_api.generation_count <= len(sent) + 1
    assert_no_secret_in_logs(bots)


def test_sigterm_finishes_the_running_job_keeps_the_rest_queued_and_the_next_start_delivers_them(
    bots: BotProcesses, fake_discord: FakeDiscord, fake_api: FakeImageApi
) -> None:
    first = bots.start()
    sent = push_jobs(fake_discord, users=2)  # 4 jobs from 2 users

    def first_generating(_: FakeDiscord) -> RecordedRequest | None:
        """Every job in the store, the first one in flight upstream."""
        rows = job_rows(bots.tmp_path)
        requests = fake_api.requests
        ready = len(rows) == len(sent) and len(requests) == 1 and requests[0].status is None
        return requests[0] if ready else None

    running = fake_discord.wait_for_sync(first_generating, timeout=60)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=40) == 0

    rows = job_rows(bots.tmp_path)
    [finished] = [one for one in sent if rows[one.id]["prompt"] == running.json["prompt"]]
    assert rows[finished.id]["state"] == "delivered" and rows[finished.id]["interaction_token"] is None
    assert len(image_edits(fake_discord, finished)) == 1
    rest = [one for one in sent if one is not finished]
    assert [(rows[one.id]["state"], rows[one.id]["attempts"]) for one in rest] == [("queued", 0)] * 3
    assert all(image_edits(fake_discord, one) == [] for one in rest)
    assert fake_api.generation_count == 1 and len(fake_api.requests) == 1

    bots.start()
    rows = wait_until_all(bots, sent, ("delivered", "failed"))

    assert [rows[one.id]["state"] for one in sent] == ["delivered"] * 4
    assert all(row["interaction_token"] is None for row in rows.values())
    assert all(len(image_edits(fake_discord, one)) == 1 for one in sent)
    assert fake_api.generation_count == 4 and len(fake_api.requests) == 4  # nothing generated twice
    assert_no_secret_in_logs(bots)


def test_sigterm_lets_a_slow_generation_already_sent_finish_past_the_grace(
    bots: BotProcesses, fake_discord: FakeDiscord, fake_api: FakeImageApi
) -> None:
    """SHUTDOWN_GRACE_S (1 s here) is shorter than the generation: cancelling it would have it
    generated, and billed, again after the restart. It is delivered before the bot exits."""
    fake_api.latency_s = 3.0
    first = bots.start(SHUTDOWN_GRACE_S="1")
    [sent] = push_jobs(fake_discord, users=1, per_user=1)
    fake_discord.wait_for_sync(lambda _: in_flight(fake_api), timeout=30)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=40) == 0
    row = job_rows(bots.tmp_path)[sent.id]
    assert (row["state"], row["attempts"], row["cost_fen"]) == ("delivered", 1, PRICE_FEN)
    assert len(image_edits(fake_discord, sent)) == 1
    assert fake_api.generation_count == 1


def test_a_second_sigterm_stops_at_once_and_the_request_is_resubmitted_once(
    bots: BotProcesses, fake_discord: FakeDiscord, fake_api: FakeImageApi
) -> None:
    fake_api.latency_s = 20.0
    first = bots.start()
    [sent] = push_jobs(fake_discord, users=1, per_user=1)
    fake_discord.wait_for_sync(lambda _: in_flight(fake_api), timeout=30)
    first.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert first.poll() is None  # waiting for the request in flight
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0
    assert job_rows(bots.tmp_path)[sent.id]["state"] == "submitting"
    fake_api.latency_s = 0.2
    bots.start()
    rows = wait_until_all(bots, [sent], ("delivered", "failed"))
    assert (rows[sent.id]["state"], rows[sent.id]["attempts"]) == ("delivered", 2)
    assert len(image_edits(fake_discord, sent)) == 1
