"""Sharding: SHARD_COUNT and SHARD_IDS split the bot's guilds across processes, and SHARD_IDS=none
makes a pure worker (no gateway connection; it runs jobs from the shared queue).

The settings are checked first. Then real processes (`python -m bot run`) against the fake Discord
and the fake image API (both in this test process), sharing one PostgreSQL schema: the store is
what lets any process run any job, and SQLite cannot be shared between machines, so these tests
run on PostgreSQL only (skipped locally without a server, failing in CI, as every PostgreSQL run).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from bot.app import ImagineBot, point_at_discord
from bot.config import load_settings
from bot.errors import ConfigError
from bot.ui import render
from tests.conftest import TEST_API_KEY, env_for
from tests.discord.conftest import BotHarness
from tests.fakes.fake_discord import FakeDiscord, FakeGuild, SentInteraction, shard_of
from tests.fakes.image_api import FakeImageApi

T = TypeVar("T")
SHARDS = 2
PRICE_FEN = 18
EPHEMERAL = 64


# -- the settings ------------------------------------------------------------------------------------
def test_shard_settings_unset_mean_one_process_for_every_shard() -> None:
    settings = load_settings(_env_file=None)
    assert (settings.shard_count, settings.shard_ids) == (None, None)
    assert settings.syncs_commands and not settings.pure_worker


@pytest.mark.parametrize(
    ("env", "ids", "syncs", "worker"),
    [
        ({"SHARD_COUNT": "4"}, None, True, False),  # every shard of 4 in this process
        ({"SHARD_COUNT": "4", "SHARD_IDS": ""}, None, True, False),  # empty = every shard
        ({"SHARD_COUNT": "4", "SHARD_IDS": "0, 2"}, (0, 2), True, False),
        ({"SHARD_COUNT": "4", "SHARD_IDS": "3"}, (3,), False, False),  # shard 0 runs elsewhere: it syncs
        ({"SHARD_COUNT": "4", "SHARD_IDS": "none"}, (), False, True),
        ({"SHARD_IDS": "None"}, (), False, True),  # a pure worker needs no count
    ],
)
def test_shard_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], ids: Any, syncs: bool, worker: bool):
    monkeypatch.setenv("DATABASE_URL", "postgresql://bot@db.example:5432/imagine")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(_env_file=None)
    assert (settings.shard_ids, settings.syncs_commands, settings.pure_worker) == (ids, syncs, worker)


def test_every_shard_of_a_count_runs_on_sqlite_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARD_COUNT", "2")
    monkeypatch.setenv("SHARD_IDS", "0,1")  # one process, both shards: no queue to share
    assert load_settings(_env_file=None).shard_ids == (0, 1)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SHARD_COUNT": "0"}, "SHARD_COUNT is invalid"),
        ({"SHARD_COUNT": "two"}, "SHARD_COUNT is invalid"),
        ({"SHARD_IDS": "0"}, "SHARD_IDS is invalid: needs SHARD_COUNT"),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "0,2"}, "SHARD_IDS is invalid: shard 2 does not exist with SHARD_COUNT=2"),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "1,1"}, "SHARD_IDS is invalid: lists a shard twice"),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "-1"}, "SHARD_IDS is invalid: '-1' is not a shard number"),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "all"}, "SHARD_IDS is invalid: 'all' is not a shard number"),
        # on SQLite each process has a queue of its own: other processes could not run its jobs
        ({"SHARD_COUNT": "2", "SHARD_IDS": "1", "DATABASE_URL": "sqlite:///x.db"}, "SHARD_IDS is invalid: runs only"),
        ({"SHARD_IDS": "none", "DATABASE_URL": "sqlite:///x.db"}, "SHARD_IDS is invalid: none makes a pure worker"),
    ],
)
def test_invalid_shard_settings_are_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://bot@db.example:5432/imagine")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    assert caught.value.message.startswith(expected)
    assert "\n" not in caught.value.message and caught.value.message.count(" is invalid: ") == 1
    assert "Fix it in .env or the environment" in caught.value.message


# -- one process, in this test's event loop ------------------------------------------------------------
@pytest.fixture
def pointed(sharded_discord: FakeDiscord) -> Any:
    restore = sharded_discord.point_discord_py_here()
    yield sharded_discord
    restore()


async def test_one_process_with_a_shard_count_runs_every_shard(
    pointed: FakeDiscord, fake_api: FakeImageApi, make_settings: Callable[..., Any]
) -> None:
    harness = BotHarness(pointed, fake_api, make_settings)
    try:
        bot = await harness.start(shard_count=SHARDS)  # SQLite: every shard here, nothing to share
        assert pointed.ready_shards == {(0, SHARDS), (1, SHARDS)} and sorted(bot.shards) == [0, 1]
        assert {g.id for g in bot.guilds} == {g.id for g in pointed.guilds}
        [zero, one] = [next(g for g in pointed.guilds if shard_of(g.id, SHARDS) == n) for n in (0, 1)]
        sent = [pointed.send_slash("imagine", {"prompt": f"Moon {g.id}"}, guild_id=g.id) for g in (zero, one)]
        for each in sent:
            await harness.result(each)
        assert pointed.sync_count == 1
        # Given SHARD_COUNT, discord.py does not ask GET /gateway/bot for a count.
        assert pointed.requests_to("GET", r"^/gateway") == []
    finally:
        await harness.stop(force=True)


async def test_without_a_shard_count_a_gateway_proxy_is_still_used(
    pointed: FakeDiscord, fake_api: FakeImageApi, make_settings: Callable[..., Any]
) -> None:
    """Without SHARD_COUNT discord.py asks GET /gateway/bot for the count *and the URL*; the bot
    takes only the count, so DISCORD_GATEWAY_URL (a gateway proxy) stays in between."""
    with FakeDiscord(guilds=pointed.guilds) as proxy:  # stands in for a gateway proxy
        settings = make_settings(discord_token=pointed.bot_token, discord_gateway_url=proxy.gateway_url)
        point_at_discord(settings)  # REST stays on `pointed`; the fixture restores both afterwards
        bot = ImagineBot(settings, serve=False, guild_ready_timeout=0.05)
        task = asyncio.create_task(bot.start(pointed.bot_token))
        try:
            await proxy.wait_ready()
            assert pointed.requests_to("GET", r"^/gateway/bot$")  # asked for the count
            assert pointed.identify_count == 0 and proxy.identify_payloads[0]["shard"] == [0, 1]
        finally:
            await bot.close()
            await asyncio.wait_for(task, 10)


# -- real processes ----------------------------------------------------------------------------------
@dataclass
class BotProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Processes:
    """`python -m bot run` processes on one PostgreSQL schema; all killed at the end of the test."""

    tmp_path: Path
    discord: FakeDiscord
    api: FakeImageApi
    database_url: str
    running: list[BotProcess] = field(default_factory=list)

    def start(self, name: str, **env: str) -> BotProcess:
        values = {
            "DISCORD_TOKEN": self.discord.bot_token,
            "DISCORD_API_BASE": self.discord.api_base,
            "DISCORD_GATEWAY_URL": self.discord.gateway_url,
            "NEBULA_API_KEY": TEST_API_KEY,
            "NEBULA_BASE_URL": self.api.base_url,
            "DATABASE_URL": self.database_url,
            "CACHE_DIR": str(self.tmp_path / "cache"),
            "SHARD_COUNT": str(SHARDS),
            "UPSTREAM_RPM": "6000",
            "SHUTDOWN_GRACE_S": "5",
            "LOG_LEVEL": "DEBUG",
            **env,
        }
        log = self.tmp_path / f"{name}.stderr"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bot", "run"],
                cwd=self.tmp_path,
                env=env_for(values),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        one = BotProcess(name, proc, log)
        self.running.append(one)
        return one

    async def until(self, what: Callable[[], T | None], timeout: float = 30) -> T:
        """Poll until `what()` is truthy; fail early, with its log, if a bot exits."""
        deadline = time.monotonic() + timeout
        while True:
            if result := what():
                return result
            for one in self.running:
                if one.proc.poll() is not None:
                    raise AssertionError(f"{one.name} exited with {one.proc.returncode}:\n{one.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.05)

    async def shard_ready(self, shard: int) -> None:
        """The shard's process has set up (setup_hook runs before the gateway) and has its guilds."""
        await self.until(lambda: (shard, SHARDS) in self.discord.ready_shards)

    async def worker_ready(self, worker: BotProcess) -> None:
        await self.until(lambda: "pure worker (SHARD_IDS=none)" in worker.log_text())

    def kill_all(self) -> None:
        for one in self.running:
            if one.proc.poll() is None:
                one.proc.kill()
            one.proc.wait(timeout=30)


@pytest.fixture
def sharded_discord() -> AsyncIterator[FakeDiscord]:
    """Four guilds, two on each of the two shards."""
    guilds = [FakeGuild.on_shard(n % SHARDS, SHARDS, name=f"Guild {n}") for n in range(4)]
    with FakeDiscord(guilds=guilds) as fake:
        yield fake


@pytest.fixture
def bots(tmp_path: Path, sharded_discord: FakeDiscord, fake_api: FakeImageApi, database_url: str):
    processes = Processes(tmp_path, sharded_discord, fake_api, database_url)
    try:
        yield processes
    finally:
        processes.kill_all()


async def job_rows(database_url: str) -> dict[int, dict[str, Any]]:
    connection = await asyncpg.connect(database_url)
    try:
        try:
            rows = await connection.fetch("SELECT id, guild_id, state, attempts, cost_fen, claimed_by FROM jobs")
        except asyncpg.UndefinedTableError:  # not migrated yet
            return {}
    finally:
        await connection.close()
    return {row["id"]: dict(row) for row in rows}


async def until_all(bots: Processes, sent: list[SentInteraction], timeout: float = 30, **watch: Any):
    """Every job delivered or failed; `watch["claims"]` collects each job's claimers seen meanwhile."""
    claims: dict[int, set[str]] = watch.get("claims", {})
    latest: dict[int, dict[str, Any]] = {}

    async def check() -> dict[int, dict[str, Any]] | None:
        latest.clear()
        latest.update(await job_rows(bots.database_url))
        for job_id, row in latest.items():
            if row["claimed_by"]:
                claims.setdefault(job_id, set()).add(row["claimed_by"])
        done = len(latest) == len(sent) and all(r["state"] in ("delivered", "failed") for r in latest.values())
        return dict(latest) if done else None

    return await poll(check, bots, timeout)


async def poll(check: Callable[[], Awaitable[T | None]], bots: Processes, timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        if result := await check():
            return result
        for one in bots.running:
            if one.proc.poll() is not None:
                raise AssertionError(f"{one.name} exited with {one.proc.returncode}:\n{one.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s; jobs: {await job_rows(bots.database_url)}")
        await asyncio.sleep(0.05)


def image_edits(fake: FakeDiscord, sent: SentInteraction) -> list[dict]:
    message = fake.original_message(sent.id)
    assert message is not None, f"interaction {sent.id} has no reply"
    return [entry for entry in message.history if entry["op"] == "edit" and entry["files"]]


def pid_of(claimed_by: str) -> int:
    """`host:pid:token` -> pid."""
    return int(claimed_by.split(":")[-2])


def assert_no_secret_in_logs(bots: Processes) -> None:
    for one in bots.running:
        text = one.log_text()
        assert "imagine.app" in text  # it did log
        assert bots.discord.bot_token not in text and TEST_API_KEY not in text


ON_POSTGRES = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


@ON_POSTGRES
async def test_two_shard_processes_each_answer_the_guilds_of_their_own_shard(
    bots: Processes, sharded_discord: FakeDiscord, fake_api: FakeImageApi
) -> None:
    fake = sharded_discord
    fake_api.latency_s = 0.2
    first = bots.start("shard-0", SHARD_IDS="0")
    await bots.shard_ready(0)  # it migrated the fresh schema and synced the commands
    second = bots.start("shard-1", SHARD_IDS="1")
    await bots.shard_ready(1)

    # Each process identified for its own shard and was sent only that shard's guilds.
    assert sorted(p["shard"] for p in fake.identify_payloads) == [[0, SHARDS], [1, SHARDS]]
    sessions = {s.shard: s for s in fake.sessions}
    assert set(sessions) == {(0, SHARDS), (1, SHARDS)}
    for shard in (0, 1):
        expected = {g.id for g in fake.guilds if shard_of(g.id, SHARDS) == shard}
        assert set(sessions[(shard, SHARDS)].guild_ids) == expected and len(expected) == 2

    sent = [
        fake.send_slash("imagine", {"prompt": f"Lighthouse in guild {n}"}, guild_id=guild.id, user_id=1000 + n)
        for n, guild in enumerate(fake.guilds)
    ]
    dm = fake.send_dm_slash("imagine", {"prompt": "a DM"}, user_id=999)
    rows = await until_all(bots, sent)

    # Guilds of both shards got their image, once each, charged once.
    assert [(rows[one.id]["state"], rows[one.id]["cost_fen"]) for one in sent] == [("delivered", PRICE_FEN)] * 4
    assert all(len(image_edits(fake, one)) == 1 for one in sent)
    assert fake_api.generation_count == 4
    # The DM went to shard 0, whose process said the bot works in servers (privately).
    reply = await fake.wait_for(lambda f: f.original_message(dm.id))
    assert reply.content == render.DM_ONLY_TEXT and fake.callback_payloads(dm.id)[0]["data"]["flags"] == EPHEMERAL

    # Each interaction was dispatched to the session of its guild's shard (DMs: shard 0) and only
    # that process saw it (each bot logs the interactions it receives, at DEBUG).
    by_shard = {
        shard: {one.id for one in sent if shard_of(one.guild_id, SHARDS) == shard} | ({dm.id} if shard == 0 else set())
        for shard in (0, 1)
    }
    sessions = {s.shard: s for s in fake.sessions}
    for shard, process in ((0, first), (1, second)):
        assert set(sessions[(shard, SHARDS)].interaction_ids) == by_shard[shard]
        text = process.log_text()
        assert all(f"interaction {i} " in text for i in by_shard[shard])
        assert not any(f"interaction {i} " in text for i in by_shard[1 - shard])
    assert fake.identify_count == 2 and fake.gateway_connections == 2

    # Only the process with shard 0 synced the commands.
    assert fake.sync_count == 1
    assert "commands synced globally" in first.log_text()
    assert "not syncing commands: the process that runs shard 0 does" in second.log_text()
    assert_no_secret_in_logs(bots)


@ON_POSTGRES
async def test_a_pure_worker_connects_no_gateway_yet_runs_and_delivers_jobs(
    bots: Processes, sharded_discord: FakeDiscord, fake_api: FakeImageApi
) -> None:
    """The shard processes may hold one request in flight between them (UPSTREAM_CONCURRENCY=1,
    a budget shared by every process on the store); the worker takes up to four, so it takes jobs
    the shard processes admitted. `claimed_by` (host:pid:token) tells which process ran each job."""
    fake = sharded_discord
    fake_api.latency_s = 1.0
    shard0 = bots.start("shard-0", SHARD_IDS="0", UPSTREAM_CONCURRENCY="1")
    await bots.shard_ready(0)
    shard1 = bots.start("shard-1", SHARD_IDS="1", UPSTREAM_CONCURRENCY="1")
    worker = bots.start("worker", SHARD_IDS="none", UPSTREAM_CONCURRENCY="4")
    await bots.shard_ready(1)
    await bots.worker_ready(worker)
    connections = fake.gateway_connections

    sent = [
        fake.send_slash("imagine", {"prompt": f"Harbour {n}"}, guild_id=guild.id, user_id=2000 + n)
        for n, guild in enumerate(fake.guilds * 2)
    ]
    claims: dict[int, set[str]] = {}
    rows = await until_all(bots, sent, claims=claims)

    assert [rows[one.id]["state"] for one in sent] == ["delivered"] * len(sent)
    assert all(len(image_edits(fake, one)) == 1 for one in sent)  # one image each, none twice
    assert fake_api.generation_count == len(sent)
    assert set(claims) == {one.id for one in sent}  # every job was seen claimed while it ran
    ran_by = {job_id: {pid_of(c) for c in owners} for job_id, owners in claims.items()}
    assert all(len(pids) == 1 for pids in ran_by.values())  # nobody took a job over
    pids = {pid for owners in ran_by.values() for pid in owners}
    assert worker.proc.pid in pids, f"the worker ran nothing: {ran_by}"
    assert pids <= {shard0.proc.pid, shard1.proc.pid, worker.proc.pid}
    # ... and never touched the gateway: two sessions, one per shard, no connection of its own.
    assert fake.gateway_connections == connections == 2 and fake.identify_count == 2
    assert {s.shard for s in fake.sessions} == {(0, SHARDS), (1, SHARDS)}
    assert "not syncing commands" in worker.log_text()

    # It stops on SIGTERM like any bot process: gracefully, exit code 0.
    worker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.proc.wait, 20) == 0
    assert "stopping: requests already sent upstream finish" in worker.log_text()
    assert_no_secret_in_logs(bots)


@pytest.mark.exact_limits
@ON_POSTGRES
async def test_two_shard_processes_share_the_upstream_limits_and_the_fair_order(
    bots: Processes, sharded_discord: FakeDiscord, fake_api: FakeImageApi
) -> None:
    """A flood in a guild of shard 0 and one request in a guild of shard 1, against an upstream
    that enforces the account's limits: no 429 earned, and the light guild's job starts within
    one turn of arriving although another process admitted it."""
    fake = sharded_discord
    fake_api.rpm_limit, fake_api.concurrency_limit, fake_api.latency_s = 120, 1, 0.4
    limits = {"UPSTREAM_RPM": "120", "UPSTREAM_CONCURRENCY": "1", "USER_PENDING_MAX": "20"}
    bots.start("shard-0", SHARD_IDS="0", **limits)
    await bots.shard_ready(0)
    bots.start("shard-1", SHARD_IDS="1", **limits)
    await bots.shard_ready(1)
    [flooded] = [g for g in fake.guilds if shard_of(g.id, SHARDS) == 0][:1]
    [light] = [g for g in fake.guilds if shard_of(g.id, SHARDS) == 1][:1]
    flood = [fake.send_slash("imagine", {"prompt": f"flood {n}"}, guild_id=flooded.id, user_id=3000) for n in range(8)]
    await bots.until(lambda: len(fake_api.requests) >= 2)
    started_before = len(fake_api.requests)
    alone = fake.send_slash("imagine", {"prompt": "light"}, guild_id=light.id, user_id=3001)
    rows = await until_all(bots, [*flood, alone], timeout=40)
    assert {row["state"] for row in rows.values()} == {"delivered"}
    prompts = [r.json["prompt"] for r in fake_api.requests]
    assert prompts.index("light") <= started_before + 1, prompts  # within one turn of the flood
    assert fake_api.rate_limited_count == 0 and fake_api.generation_count == 9
    assert_no_secret_in_logs(bots)


@ON_POSTGRES
async def test_a_sigkilled_process_s_jobs_are_finished_by_the_other_once_each(
    bots: Processes, sharded_discord: FakeDiscord, fake_api: FakeImageApi
) -> None:
    fake = sharded_discord
    fake_api.latency_s = 1.0
    env = {"UPSTREAM_CONCURRENCY": "1", "JOB_LEASE_S": "5", "USER_PENDING_MAX": "20"}
    victim = bots.start("shard-0", SHARD_IDS="0", **env)
    await bots.shard_ready(0)
    survivor = bots.start("shard-1", SHARD_IDS="1", **env)
    await bots.shard_ready(1)
    [guild] = [g for g in fake.guilds if shard_of(g.id, SHARDS) == 0][:1]
    sent = [
        fake.send_slash("imagine", {"prompt": f"Beacon {n}"}, guild_id=guild.id, user_id=4000 + n) for n in range(4)
    ]

    async def victim_mid_request() -> bool:
        rows = await job_rows(bots.database_url)
        mine = [r for r in rows.values() if r["claimed_by"] and pid_of(r["claimed_by"]) == victim.proc.pid]
        return len(rows) == len(sent) and any(r["state"] == "submitting" for r in mine)

    await poll(victim_mid_request, bots, 20)
    victim.proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(victim.proc.wait, 10)
    bots.running.remove(next(b for b in bots.running if b.proc is victim.proc))
    killed_at = time.monotonic()
    rows = await until_all(bots, sent, timeout=30)
    assert time.monotonic() - killed_at < 5 + 10  # the lease, and a few seconds
    assert [rows[one.id]["state"] for one in sent] == ["delivered"] * len(sent)
    assert all(len(image_edits(fake, one)) == 1 for one in sent)  # each delivered once
    assert sum(1 for row in rows.values() if row["attempts"] == 2) <= 1  # the one caught mid-request
    assert len(sent) <= fake_api.generation_count <= len(sent) + 1
    assert all(pid_of(row["claimed_by"]) == survivor.proc.pid for row in rows.values() if row["attempts"] == 2)
