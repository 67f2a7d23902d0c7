"""Benchmark: does the bot keep a rate-limited upstream saturated without earning a 429?

Three processes, none inside another's event loop: the fake Discord, the fake image API
(enforcing, like the vendor, RPM in any 60 s, ceil(RPM/60) in any 1 s and C in flight, with
exact sliding windows; each image takes L seconds), and the bot itself (`python -m bot run`,
configured only through its environment, with the same RPM and C as its own limits).

Each case, on fresh processes and a fresh store:
1. warm-up: a few distinct prompts from the "noise" guilds are generated and delivered. This
   primes the result cache for the noise below, and lets the limiter learn how long a
   generation holds its permit (it assumes 15 s until it has seen some, and would refuse a
   large backlog as "too long a wait" for the 15-minute interaction window);
2. a backlog of distinct prompts (no cache hit, no shared flight) from many users in a few
   guilds is pushed at once; the queue maxima are raised so that none is refused;
3. from 1 s before the backlog until its last generation has started, the noise guilds send a
   steady stream of /imagine that the cache answers: each one an admission that writes the
   store (job insert, reply message, cache hit, delivered) and an upload, so the store's write
   lock is contended while the backlog runs.

Measured on the fake image API's clock (its `GET /_stats`): the start of every generation it
admitted, and the 429s it had to send (rate or concurrency). The ideal is
min(RPM, 60 * C / L) starts per minute. The steady-state rate is taken over the backlog's
starts between (first backlog start + skip) and (last backlog start - skip), as the slope of
a least-squares line through (start time, start number): starts come in bursts (ceil(RPM/60)
at a time, or C at a time when the slots free together), and a count over the window would
depend on where its edges cut a burst. For reference, "whole" is (n - 1) / (last - first) over
the whole backlog: it includes what an early pause cost, and reads a little high when starts
come in bursts (one burst too many: +0.7 % for 150 starts in pairs, +3 % for 30). Goal: >= 98 %
of the ideal in the steady state, and no 429 in the whole case (warm-up included).

A third case, "shards" (issue 9), runs TWO bot processes on one PostgreSQL: SHARD_COUNT=2, one with
SHARD_IDS=0 and one with SHARD_IDS=1, the same limits and the same DATABASE_URL (a fresh schema on
IMAGINE_TEST_POSTGRES, default postgresql://postgres@127.0.0.1:5432/test, dropped at the end; the
case is skipped with one line when the server is unreachable). The fake Discord spreads its guilds
over the two shards and sends each guild's interactions to its shard's process; the backlog and
the noise come from guilds of both shards. The processes share the upstream budget and the fair
queue through the database (either may run any job) and a CACHE_DIR (as on one volume). Shard 0
starts first (it migrates the fresh schema); the case starts once both shards are connected.
Printed as well: which process ran how many jobs (the jobs' `claimed_by`, host:pid:token), and
the backlog's starts attributed to the processes (the jobs' `started_at` matched in order to the
fake's starts), with how late each start came after the fake's 1 s window reopened, split by
whether the start that freed the window was the same process's or the other's; and, from the
shared budget's permits (copied every 2 s while the backlog runs: the budget prunes them after a
minute), where that time goes: window reopened -> permit granted -> request stamped sent -> arrival.
The backlog comes from --guilds guilds on each shard, the noise from --noise-guilds guilds (rounded
up to a multiple of the shards) spread over them too.

Also printed per case: the backlog's outcome (all must be admitted and delivered), the
acknowledgement latency of the backlog and of the noise (push to the bot's first answer, on
the fake Discord's clock), when each 429 came and what the fake had admitted in the second
before it, and the bot's "upstream paused" log lines. The bot's log is kept in its temp folder.

    .venv/bin/python -m bench.saturation [--cases rpm,concurrency,shards] [--runs 1] [--noise-rate 15]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import shutil
import statistics
import subprocess
import threading
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.harness import bench_settings, http, slash, start, start_bot, start_bot_in, stop, wait_until

GOAL_RATIO = 0.98
NOISE_USERS = 200
POSTGRES_URL = os.environ.get("IMAGINE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class Case:
    name: str
    rpm: int
    concurrency: int
    latency: float
    jobs: int
    shards: int = 0  # 0: one bot process on SQLite; N: N bot processes on one PostgreSQL, one shard each

    @property
    def kind(self) -> str:
        """Its --cases choice."""
        return "shards" if self.shards else self.bound

    @property
    def ideal_per_min(self) -> float:
        return min(self.rpm, 60 * self.concurrency / self.latency)

    @property
    def bound(self) -> str:
        return "rpm" if self.rpm <= 60 * self.concurrency / self.latency else "concurrency"


@dataclass
class Result:
    case: Case
    skip: float
    starts: list[float] = field(default_factory=list)  # the backlog's admitted starts, fake's clock
    rate_limited: int = 0  # 429s the fake sent during the whole case
    rate_limited_at: list[float] = field(default_factory=list)
    all_starts: list[float] = field(default_factory=list)  # warm-up included
    max_in_flight: int = 0
    delivered: int = 0
    refused: int = 0
    backlog_acks: list[float] = field(default_factory=list)
    noise_acks: list[float] = field(default_factory=list)
    noise_sent: int = 0
    noise_failed: int = 0
    noise_seconds: float = 0.0
    bot_pauses: int = 0  # "upstream paused" lines in the bot's log
    bot_exit: int | None = None
    log_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    processes: list[BotShare] = field(default_factory=list)  # the shards case: one per bot process
    start_owners: list[int] = field(default_factory=list)  # the shards case: each backlog start's shard
    started_wall: list[float] = field(default_factory=list)  # ... and its job's started_at (Unix seconds)
    wall_offset: float = 0.0  # Unix time minus the fake's clock (time.monotonic(): one clock per machine)
    permits: dict[int, tuple[str, float, float]] = field(default_factory=dict)  # id -> owner, granted_at, sent_at
    margin_s: float = 0.0  # the bots' UPSTREAM_WINDOW_MARGIN_MS

    @property
    def window(self) -> list[float]:
        if len(self.starts) < 2:
            return self.starts
        low, high = self.starts[0] + self.skip, self.starts[-1] - self.skip
        inside = [t for t in self.starts if low <= t <= high]
        return inside if len(inside) >= 10 else self.starts

    @property
    def steady_per_min(self) -> float:
        return 60 * slope(self.window)

    @property
    def whole_per_min(self) -> float:
        if len(self.starts) < 2 or self.starts[-1] <= self.starts[0]:
            return 0.0
        return 60 * (len(self.starts) - 1) / (self.starts[-1] - self.starts[0])

    @property
    def ratio(self) -> float:
        return self.steady_per_min / self.case.ideal_per_min

    @property
    def complete(self) -> bool:
        return len(self.starts) >= self.case.jobs and self.delivered == self.case.jobs

    @property
    def passed(self) -> bool:
        return self.complete and self.ratio >= GOAL_RATIO and self.rate_limited == 0


@dataclass
class BotShare:
    """One bot process of the shards case: what it was sent and which jobs it ran."""

    shard: int
    pid: int
    log_path: Path
    interactions: int = 0  # the fake Discord dispatched to its session
    backlog_jobs: int = 0  # backlog jobs it claimed (jobs.claimed_by)
    warmup_jobs: int = 0
    exit: int | None = None


def slope(times: list[float]) -> float:
    """Starts per second: least-squares slope of the start number against the start time."""
    n = len(times)
    if n < 2:
        return 0.0
    mean_t, mean_i = statistics.fmean(times), (n - 1) / 2
    var = sum((t - mean_t) ** 2 for t in times)
    return sum((t - mean_t) * (i - mean_i) for i, t in enumerate(times)) / var if var else 0.0


class Noise(threading.Thread):
    """Steady /imagine from other guilds, every prompt one the cache already holds."""

    def __init__(self, control: str, guild_ids: list[int], prompts: list[str], rate: float) -> None:
        super().__init__(daemon=True, name="noise")
        self._control, self._guilds, self._prompts, self._rate = control, guild_ids, prompts, rate
        self._halt = threading.Event()
        self.pushed: dict[str, float] = {}
        self.failed = 0
        self.seconds = 0.0

    def run(self) -> None:
        if self._rate <= 0:
            return
        begin = due = time.monotonic()
        i = 0
        while not self._halt.wait(max(0.0, due - time.monotonic())):
            prompt, guild = self._prompts[i % len(self._prompts)], self._guilds[i % len(self._guilds)]
            try:
                key, at = slash(self._control, prompt, guild, 900_000 + i % NOISE_USERS)
                self.pushed[key] = at
            except (OSError, urllib.error.URLError):
                self.failed += 1
            i += 1
            due = max(due + 1.0 / self._rate, time.monotonic() - 1.0)  # behind by more than 1 s: no burst
        self.seconds = time.monotonic() - begin

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


@dataclass
class Answers:
    """What the fake Discord shows of a set of interactions."""

    first_at: dict[str, float]  # interaction id -> when its first message (defer or refusal) was made
    delivered: set[str]
    refused: set[str]

    @classmethod
    def read(cls, control: str, ids: set[str] | dict[str, float]) -> Answers:
        first_at: dict[str, float] = {}
        delivered, refused = set(), set()
        for message in http("GET", control + "/messages"):  # type: ignore[union-attr]
            key = message["interaction_id"]
            if key not in ids:
                continue
            first_at[key] = min(first_at.get(key, math.inf), message["created_at"])
            if message["attachments"]:
                delivered.add(key)
            elif message["flags"] & 64:
                refused.add(key)
        return cls(first_at, delivered, refused - delivered)

    def acks(self, pushed: dict[str, float]) -> list[float]:
        return [self.first_at.get(key, math.inf) - at for key, at in pushed.items()]


class SharedDatabase:
    """A fresh schema of its own on the PostgreSQL server (the shards case), dropped at the end."""

    def __init__(self, server_url: str = POSTGRES_URL) -> None:
        self.server_url = server_url
        self.schema = f"imagine_bench_{secrets.token_hex(6)}"
        self.url = f"{server_url}{'&' if '?' in server_url else '?'}search_path={self.schema}"

    def create(self) -> None:
        asyncio.run(self._execute(self.server_url, f"CREATE SCHEMA {self.schema}"))

    def drop(self) -> None:
        asyncio.run(self._execute(self.server_url, f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"))

    def fetch(self, sql: str, *args: object) -> list[Any]:
        async def go() -> list[Any]:
            connection = await asyncpg.connect(self.url, timeout=5)
            try:
                return list(await connection.fetch(sql, *args))
            finally:
                await connection.close()

        return asyncio.run(go())

    @staticmethod
    async def _execute(url: str, sql: str) -> None:
        connection = await asyncpg.connect(url, timeout=5)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()


class PermitWatcher(threading.Thread):
    """Copies the shared upstream budget's sent permits (owner, granted_at, sent_at; Unix seconds)
    every `period` s while the backlog runs: the budget forgets them about a minute after they left."""

    def __init__(self, database: SharedDatabase, period: float = 2.0) -> None:
        super().__init__(daemon=True, name="permits")
        self._database, self._period = database, period
        self._halt = threading.Event()
        self.permits: dict[int, tuple[str, float, float]] = {}
        self.failed = 0

    def run(self) -> None:
        while not self._halt.wait(self._period):
            self._copy()
        self._copy()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def _copy(self) -> None:
        try:
            rows = self._database.fetch("SELECT id, owner, granted_at, sent_at FROM upstream_permits WHERE sent_at > 0")
        except (OSError, TimeoutError, asyncpg.PostgresError):
            self.failed += 1
            return
        for row in rows:
            self.permits[int(row["id"])] = (row["owner"], float(row["granted_at"]), float(row["sent_at"]))


def run_case(
    case: Case, *, users: int, guilds: int, noise_guilds: int, noise_rate: float, warmup: int, skip: float
) -> Result | None:
    """One case on fresh processes and a fresh store; None when the shards case finds no PostgreSQL."""
    if not case.shards:
        return _run_case(case, None, users, guilds, noise_guilds, noise_rate, warmup, skip)
    database = SharedDatabase()
    try:
        database.create()
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        print(f"{case.name}: skipped, PostgreSQL at {database.server_url} is unreachable ({type(exc).__name__}: {exc})")
        return None
    try:
        # the backlog from `guilds` guilds of each shard, the noise from guilds of every shard too
        noise_guilds = -(-noise_guilds // case.shards) * case.shards
        return _run_case(case, database, users, guilds * case.shards, noise_guilds, noise_rate, warmup, skip)
    finally:
        database.drop()


def _run_case(
    case: Case,
    database: SharedDatabase | None,
    users: int,
    guilds: int,
    noise_guilds: int,
    noise_rate: float,
    warmup: int,
    skip: float,
) -> Result:
    sharding = ("--shard-count", str(case.shards)) if case.shards else ()
    discord_proc, (api_base, gateway) = start(
        "tests.fakes.fake_discord", "--guilds", str(guilds + noise_guilds), "--max-recorded-requests", "2000",
        *sharding, marker="FAKE_DISCORD",
    )  # fmt: skip
    image_proc, (image_base,) = start(
        "tests.fakes.image_api", "--latency", str(case.latency), "--rpm", str(case.rpm),
        "--concurrency", str(case.concurrency),
        marker="FAKE_IMAGE_API",
    )  # fmt: skip
    control = api_base.split("/api/")[0] + "/_control"
    stats_url = image_base.removesuffix("/v1") + "/_stats"
    shared = {"database_url": database.url, "shard_count": case.shards} if database is not None else {}
    settings = bench_settings(
        image_base,
        discord_api_base=api_base,
        discord_gateway_url=gateway,
        upstream_rpm=case.rpm,
        upstream_concurrency=case.concurrency,
        guild_queue_max=1000,
        user_pending_max=100,
        shutdown_grace_s=5,
        **shared,  # type: ignore[arg-type]
    )
    workdir = settings.cache_dir.parent  # bench_settings' temp folder (the SQLite file's, if any)
    result = Result(case, skip, log_path=workdir / ("bot-shard0.log" if case.shards else "bot.log"))
    result.margin_s = settings.upstream_window_margin_ms / 1000
    bots: list[Any] = []
    noise: Noise | None = None
    watcher: PermitWatcher | None = None
    backlog: dict[str, float] = {}
    try:
        if database is None:
            bots.append(start_bot(settings, result.log_path))  # type: ignore[arg-type]
            state = wait_until(lambda: _ready_state(control, bots), 60)
            if not state:
                raise RuntimeError(f"the bot did not connect; see {result.log_path}")
        else:
            for shard in range(case.shards):  # shard 0 first: it migrates the fresh schema
                log_path = workdir / f"bot-shard{shard}.log"
                bot = start_bot_in(settings, log_path, workdir, {"SHARD_IDS": str(shard)})
                bots.append(bot)
                result.processes.append(BotShare(shard, bot.pid, log_path))
                if not wait_until(lambda key=[shard, case.shards]: _shard_ready(control, bots, key), 60):
                    raise RuntimeError(f"shard {shard}'s bot did not connect; see {log_path}")
            state = _ready_state(control, bots)
            if not state:
                raise RuntimeError("the fake Discord has no ready bot")
        time.sleep(2.5)  # discord.py waits guild_ready_timeout (2 s) after the last GUILD_CREATE
        guild_ids = [int(g["id"]) for g in state["guilds"]]
        if case.shards:
            backlog_guilds, other_guilds = _by_shard(guild_ids, case.shards, guilds, noise_guilds)
        else:
            backlog_guilds, other_guilds = guild_ids[:guilds], guild_ids[guilds:]

        # 1. warm-up: prime the cache for the noise, let the limiter learn the hold time
        prompts = [f"noise prompt {n}" for n in range(warmup)]
        warm = dict(slash(control, p, other_guilds[n % len(other_guilds)], 800_000 + n) for n, p in enumerate(prompts))
        if not wait_until(lambda: len(Answers.read(control, warm).delivered) == len(warm), 120):
            result.notes.append("the warm-up was not fully delivered: the noise may not all be cache hits")
        base = len(http("GET", stats_url)["starts"])  # type: ignore[index]

        # 2 and 3: the noise, then the whole backlog at once
        if database is not None:
            watcher = PermitWatcher(database)
            watcher.start()
        noise = Noise(control, other_guilds, prompts, noise_rate)
        noise.start()
        time.sleep(1.0)
        jobs = [
            (f"{case.name} backlog {n}", backlog_guilds[(n % users) % len(backlog_guilds)], 100_000 + n % users)
            for n in range(case.jobs)
        ]
        with ThreadPoolExecutor(4) as pool:
            backlog = dict(pool.map(lambda job: slash(control, *job), jobs))
        expected_s = case.jobs / case.ideal_per_min * 60
        wait_until(lambda: len(http("GET", stats_url)["starts"]) >= base + case.jobs, expected_s * 2 + 60, 0.5)  # type: ignore[index]
        noise.stop()
        result.noise_failed, result.noise_seconds = noise.failed, noise.seconds
        result.noise_sent = len(noise.pushed)
        wait_until(lambda: len(Answers.read(control, backlog).delivered) == case.jobs, 30, 1.0)  # the last ones
        time.sleep(1.0)  # the last noise answers
        answers = Answers.read(control, {**backlog, **noise.pushed})
        result.delivered = len(answers.delivered & backlog.keys())
        result.refused = len(answers.refused & backlog.keys())
        result.backlog_acks, result.noise_acks = answers.acks(backlog), answers.acks(noise.pushed)
        stats: dict[str, Any] = http("GET", stats_url)  # type: ignore[assignment]
        result.all_starts = stats["starts"]
        result.starts = stats["starts"][base:]
        result.rate_limited = stats["rate_limited_count"]
        result.rate_limited_at = stats["rate_limited_at"]
        result.max_in_flight = stats["max_in_flight"]
        result.wall_offset = time.time() - time.monotonic()  # the fake's clock is time.monotonic() too
        if watcher is not None:
            watcher.stop()
            result.permits = watcher.permits
            if watcher.failed:
                result.notes.append(f"{watcher.failed} copies of the upstream permits failed")
        if case.shards:
            sessions: list[dict[str, Any]] = http("GET", control + "/sessions")  # type: ignore[assignment]
            for share in result.processes:
                mine = [s for s in sessions if s["shard"] == [share.shard, case.shards]]
                share.interactions = sum(s["interactions"] for s in mine)
    finally:
        if noise is not None and noise.is_alive():
            noise.stop()
        if watcher is not None and watcher.is_alive():
            watcher.stop()
        exits = _stop_all(bots)
        result.bot_exit = exits[0] if exits else None
        for share, code in zip(result.processes, exits, strict=False):
            share.exit = code
        for process in (discord_proc, image_proc):
            stop(process, 10)
    logs = [share.log_path for share in result.processes] or [result.log_path]
    result.bot_pauses = sum(path.read_text(errors="replace").count("upstream paused") for path in logs)  # type: ignore[union-attr]
    if database is not None:
        _read_claims(result, database)
    shutil.rmtree(settings.cache_dir, ignore_errors=True)  # keep only the bots' logs
    if database is None:
        for db in settings.database_path.parent.glob(settings.database_path.name + "*"):
            db.unlink()
    return result


def _ready_state(control: str, bots: list[Any]) -> dict[str, Any] | None:
    _check_alive(bots)
    state: dict[str, Any] = http("GET", control + "/state")  # type: ignore[assignment]
    return state if state["ready"] else None


def _shard_ready(control: str, bots: list[Any], shard: list[int]) -> bool:
    """A connected session of this shard ([id, count]) has had READY and all its guilds."""
    _check_alive(bots)
    sessions: list[dict[str, Any]] = http("GET", control + "/sessions")  # type: ignore[assignment]
    return any(s["shard"] == shard and s["ready"] and s["connected"] and not s["replaced"] for s in sessions)


def _check_alive(bots: list[Any]) -> None:
    for bot in bots:
        if bot.poll() is not None:
            raise RuntimeError(f"a bot (pid {bot.pid}) exited with {bot.returncode} before the case began")


def _stop_all(bots: list[Any], timeout: float = 20.0) -> list[int]:
    """SIGTERM to every bot at once (a second one would stop them at once), then wait; SIGKILL past `timeout`."""
    for bot in bots:
        if bot.poll() is None:
            bot.terminate()
    deadline = time.monotonic() + timeout
    for bot in bots:
        try:
            bot.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            bot.kill()
            bot.wait()
    return [bot.returncode for bot in bots]


def _by_shard(guild_ids: list[int], shards: int, backlog: int, noise: int) -> tuple[list[int], list[int]]:
    """The backlog's guilds and the noise's, as many from each shard, the shards taking turns."""
    by = [[g for g in guild_ids if (g >> 22) % shards == shard] for shard in range(shards)]
    per_backlog, per_noise = backlog // shards, noise // shards
    for shard, ids in enumerate(by):
        if len(ids) < per_backlog + per_noise:
            raise RuntimeError(f"shard {shard} has {len(ids)} guild(s), {per_backlog + per_noise} needed")
    return (
        [by[s][i] for i in range(per_backlog) for s in range(shards)],
        [by[s][per_backlog + i] for i in range(per_noise) for s in range(shards)],
    )


def _read_claims(result: Result, database: SharedDatabase) -> None:
    """Which process ran which job (`claimed_by` = host:pid:token stays on a finished job), and the
    backlog's starts attributed to the processes: the jobs' `started_at` (stamped as the job is
    marked submitting, just before its request leaves) matched in order to the fake's starts."""
    shard_of_pid = {share.pid: share for share in result.processes}
    rows = database.fetch(
        "SELECT prompt, claimed_by, started_at, cache_hit FROM jobs"
        " WHERE prompt LIKE $1 OR prompt LIKE 'noise prompt %'",
        f"{result.case.name} backlog %",
    )
    started: list[tuple[float, int]] = []
    for row in rows:
        owner = shard_of_pid.get(int(row["claimed_by"].split(":")[-2])) if row["claimed_by"] else None
        if owner is None:
            continue
        if row["prompt"].startswith("noise prompt"):
            owner.warmup_jobs += 0 if row["cache_hit"] else 1
            continue
        owner.backlog_jobs += 1
        if row["started_at"]:
            started.append((datetime.fromisoformat(row["started_at"]).timestamp(), owner.shard))
    started.sort()
    if len(started) == len(result.starts):
        result.start_owners = [shard for _, shard in started]
        result.started_wall = [at for at, _ in started]
    else:
        found = f"{len(started)} backlog jobs with a start time for {len(result.starts)} starts"
        result.notes.append(f"{found}: the starts are not attributed to the processes")


def header() -> str:
    return (
        f"{'case':<12}{'rpm':>5}{'C':>3}{'L s':>5}{'ideal/min':>10}{'measured/min':>13}{'ratio':>8}"
        f"{'whole':>8}{'429s':>6}  {'goal':<15}result"
    )


def row(result: Result) -> str:
    case = result.case
    verdict = "PASS" if result.passed else "FAIL" + ("" if result.complete else " (backlog incomplete)")
    return (
        f"{case.name:<12}{case.rpm:>5}{case.concurrency:>3}{case.latency:>5g}{case.ideal_per_min:>10.1f}"
        f"{result.steady_per_min:>13.1f}{result.ratio:>8.1%}{result.whole_per_min / case.ideal_per_min:>8.1%}"
        f"{result.rate_limited:>6}  {'>= 98 % and 0':<15}{verdict}"
    )


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples) or [0.0]
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _acks(samples: list[float]) -> str:
    if not samples:
        return "none"
    ordered = sorted(samples)
    late = sum(1 for s in samples if s > 3.0)
    return (
        f"median {statistics.median(ordered) * 1000:.0f} ms, p99 {_p(ordered, 0.99) * 1000:.0f} ms,"
        f" max {ordered[-1] * 1000:.0f} ms, {late} over 3 s"
    )


def details(result: Result) -> str:
    case, window = result.case, result.window
    per_second = math.ceil(case.rpm / 60)
    spans = [window[i + per_second] - window[i] for i in range(len(window) - per_second)]
    gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
    zero = result.starts[0] if result.starts else 0.0
    # with every slot busy, start i takes the slot of start i - C once its answer (L s later) is back
    idle = [window[i] - window[i - case.concurrency] - case.latency for i in range(case.concurrency, len(window))]
    lines = [
        f"  {len(result.starts)}/{case.jobs} backlog starts, {result.delivered} delivered, {result.refused} refused;"
        f" window {window[-1] - window[0] if window else 0:.1f} s with {len(window)} starts"
        f"{' (too short a backlog to skip the ends)' if window is result.starts else ''}; longest gap"
        f" {max(gaps, default=0):.3f} s; median time for {per_second} starts {statistics.median(spans or [0]):.3f} s;"
        f" at most {result.max_in_flight} in flight at the fake",
        f"  acknowledged: backlog {_acks(result.backlog_acks)}; noise {_acks(result.noise_acks)}",
        f"  noise: {result.noise_sent} cache-answered /imagine in {result.noise_seconds:.1f} s"
        f" ({result.noise_sent / result.noise_seconds if result.noise_seconds else 0:.1f}/s,"
        f" {result.noise_failed} failed pushes)",
    ]
    if case.bound == "concurrency":
        lines.insert(
            1,
            f"  a slot's idle time, from an answer (start C earlier + L) to the next start: median"
            f" {statistics.median(idle or [0]) * 1000:.0f} ms, p90 {_p(idle, 0.9) * 1000:.0f} ms",
        )
    for at in result.rate_limited_at:
        before = [t for t in result.all_starts if at - 1.0 < t <= at]
        lines.append(
            f"  429 at {at - zero:+.3f} s from the first backlog start; admitted in the second before it:"
            f" {', '.join(f'{t - zero:+.3f}' for t in before) or 'none'}"
        )
    if result.processes:
        lines += _shares(result)
    else:
        bot = f"{result.bot_pauses} 'upstream paused' log line(s), exit {result.bot_exit}, log {result.log_path}"
        lines.append(f"  bot: {bot}")
    lines += [f"  note: {note}" for note in result.notes]
    return "\n".join(lines)


def _shares(result: Result) -> list[str]:
    """The shards case: each process's share, and the backlog's starts by process."""
    case, total = result.case, sum(share.backlog_jobs for share in result.processes)
    lines = [
        f"  process shard {share.shard}/{case.shards} (pid {share.pid}): {share.interactions} interactions sent to"
        f" its session, ran {share.backlog_jobs} backlog job(s) ({share.backlog_jobs / total if total else 0:.0%})"
        f" and {share.warmup_jobs} warm-up generation(s); exit {share.exit}, log {share.log_path}"
        for share in result.processes
    ]
    lines.append(f"  bots: {result.bot_pauses} 'upstream paused' log line(s) in all")
    owners, starts = result.start_owners, result.starts
    if not owners:
        return lines
    low, high = starts[0] + result.skip, starts[-1] - result.skip
    inside = [i for i, t in enumerate(starts) if low <= t <= high]
    switches = sum(1 for i in inside[1:] if owners[i] != owners[i - 1])
    lines.append(
        f"  backlog starts by process: {', '.join(f'shard {s} {owners.count(s)}' for s in range(case.shards))};"
        f" in the window, {switches} of {max(0, len(inside) - 1)} consecutive starts change process"
    )
    # start i may come once start i - per_second has left the fake's 1 s window (+ the bot's margin)
    per_second = math.ceil(case.rpm / 60)
    late: dict[bool, list[float]] = {True: [], False: []}
    for i in inside:
        if i >= per_second:
            late[owners[i] == owners[i - per_second]].append(starts[i] - starts[i - per_second] - 1.0)
    for same, what in ((True, "the same process's"), (False, "the other process's")):
        samples = late[same]
        if samples:
            lines.append(
                f"  after {what} start left the 1 s window ({len(samples)} starts): next start"
                f" {statistics.median(samples) * 1000:.0f} ms later (median), p90 {_p(samples, 0.9) * 1000:.0f} ms,"
                f" max {max(samples) * 1000:.0f} ms"
            )
    leads = [t + result.wall_offset - w for t, w in zip(starts, result.started_wall, strict=True)]
    lines.append(
        f"  a job's started_at (marked submitting) to its arrival at the fake: median"
        f" {statistics.median(leads) * 1000:.0f} ms, p90 {_p(leads, 0.9) * 1000:.0f} ms (clock offset estimated)"
    )
    return lines + _permit_path(result, inside)


def _permit_path(result: Result, inside: list[int]) -> list[str]:
    """Where a start's time goes once the windows allow it, from the shared budget's permits: the
    window reopens (the per_second-th last stamped start + 1 s + margin) -> granted (the waiter
    woke, began its grant transaction, took the advisory lock) -> stamped sent (the rest of the grant
    transaction, the claim transaction, the job's preamble, marked submitting, the request built)
    -> arrival at the fake (transit; the clock offset is estimated)."""
    first, last = result.starts[0] + result.wall_offset, result.starts[-1] + result.wall_offset
    permits = sorted(
        (sent, granted, owner) for owner, granted, sent in result.permits.values() if first - 0.5 <= sent <= last + 0.5
    )
    if len(permits) != len(result.starts):
        return [f"  {len(permits)} permits copied for {len(result.starts)} backlog starts: no breakdown"]
    per_second = math.ceil(result.case.rpm / 60)
    parts: dict[str, list[float]] = {"window -> granted": [], "granted -> sent": [], "sent -> at the fake": []}
    for i in inside:
        if i < per_second:
            continue
        sent, granted, _owner = permits[i]
        reopens = permits[i - per_second][0] + 1.0 + result.margin_s
        parts["window -> granted"].append(granted - reopens)
        parts["granted -> sent"].append(sent - granted)
        parts["sent -> at the fake"].append(result.starts[i] + result.wall_offset - sent)
    text = "; ".join(
        f"{name} median {statistics.median(v) * 1000:.1f} ms (p90 {_p(v, 0.9) * 1000:.1f})" for name, v in parts.items()
    )
    return [f"  a start past the bots' window (1 s + {result.margin_s * 1000:.0f} ms margin): {text}"]


def default_cases(rpm_jobs: int = 150, concurrency_jobs: int = 240, shards_jobs: int = 150) -> list[Case]:
    return [
        # 120/min against 60*4/0.5 = 480/min: the rate windows bind (2 starts per second)
        Case("rpm-bound", rpm=120, concurrency=4, latency=0.5, jobs=rpm_jobs),
        # 60*2/0.5 = 240/min against 600/min: the two slots bind
        Case("conc-bound", rpm=600, concurrency=2, latency=0.5, jobs=concurrency_jobs),
        # the rpm-bound limits, shared by two bot processes (one shard each) on one PostgreSQL
        Case("pg-2-shards", rpm=120, concurrency=4, latency=0.5, jobs=shards_jobs, shards=2),
    ]


def run(
    cases: list[Case] | None = None,
    *,
    runs: int = 1,
    users: int = 30,
    guilds: int = 2,
    noise_guilds: int = 2,
    noise_rate: float = 15.0,
    warmup: int = 16,
    skip: float = 5.0,
) -> list[Result]:
    """Run the cases (`runs` times), print a row and details per case; the results."""
    cases = default_cases() if cases is None else cases
    sharded = ""
    if any(case.shards for case in cases):
        sharded = f" (shards: {guilds} backlog guilds on each shard, the noise's guilds spread over the shards)"
    print(
        f"saturation, on {os.cpu_count()} core(s): the bot, the fake Discord and the fake image API in processes of"
        f" their own; a backlog from {users} users in {guilds} guilds pushed at once, while {noise_guilds} other"
        f" guilds send {noise_rate:g}/s cache-answered /imagine{sharded}. On the fake image API's clock: measured ="
        f" least-squares starts/min over the backlog's starts less {skip:g} s at each end; whole = (n - 1) /"
        f" (last - first) over all of them"
    )
    results: list[Result] = []
    for n in range(runs):
        if runs > 1:
            print(f"run {n + 1}/{runs}")
        print(header(), flush=True)
        for case in cases:
            kw = {"users": users, "guilds": guilds, "noise_guilds": noise_guilds, "noise_rate": noise_rate}
            result = run_case(case, warmup=warmup, skip=skip, **kw)  # type: ignore[arg-type]
            if result is None:  # skipped: said why
                continue
            results.append(result)
            print(row(result))
            print(details(result), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases",
        default="rpm,concurrency,shards",
        help="rpm, concurrency, shards (two bot processes on PostgreSQL), comma-separated",
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--rpm-jobs", type=int, default=150, help="backlog of the rpm-bound case (120/min)")
    parser.add_argument("--concurrency-jobs", type=int, default=240, help="backlog of the concurrency-bound case")
    parser.add_argument("--shards-jobs", type=int, default=150, help="backlog of the two-process case (120/min)")
    parser.add_argument("--users", type=int, default=30, help="users sending the backlog")
    parser.add_argument("--guilds", type=int, default=2, help="guilds the backlog comes from (shards: on each shard)")
    parser.add_argument("--noise-guilds", type=int, default=2, help="other guilds, sending cache-answered /imagine")
    parser.add_argument("--noise-rate", type=float, default=15.0, help="their /imagine per second (0: none)")
    parser.add_argument("--warmup", type=int, default=16, help="prompts generated first (the noise's cached prompts)")
    parser.add_argument("--skip", type=float, default=5.0, help="seconds left out at each end of the backlog")
    args = parser.parse_args()
    chosen = {name.strip() for name in args.cases.split(",")}
    cases = [c for c in default_cases(args.rpm_jobs, args.concurrency_jobs, args.shards_jobs) if c.kind in chosen]
    results = run(
        cases,
        runs=args.runs,
        users=args.users,
        guilds=args.guilds,
        noise_guilds=args.noise_guilds,
        noise_rate=args.noise_rate,
        warmup=max(1, args.warmup),
        skip=args.skip,
    )
    raise SystemExit(0 if all(r.passed for r in results) else 1)


if __name__ == "__main__":
    main()
