"""Metrics and health probes over real HTTP, while the real discord.py client (our ImagineBot) runs
against the fake Discord and the fake image API: the figures scraped agree with the ledger (the
store's jobs and refusals), and /readyz turns 503 for what really stops the bot from working.
"""

from __future__ import annotations

import asyncio
import collections
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.app import ImagineBot
from bot.errors import ConfigError
from tests.conftest import TEST_API_KEY
from tests.discord.conftest import BotHarness, private_refusal
from tests.discord.test_sharding import ON_POSTGRES, SHARDS, Processes, until_all
from tests.fakes.fake_discord import FakeDiscord, FakeGuild, SentInteraction, shard_of
from tests.fakes.image_api import FakeImageApi, Reply

USER_ID, OTHER_ID, THIRD_ID = 910_001, 910_002, 910_003


# -- scraping ------------------------------------------------------------------------------------------------
def ops_url(bot: ImagineBot | str, path: str) -> str:
    """`bot`: one in this process, or the base URL of one in another."""
    if isinstance(bot, str):
        return bot + path
    assert bot.ops_server is not None and bot.ops_server.port, "the metrics server is not running"
    return f"http://{bot.settings.metrics_host}:{bot.ops_server.port}{path}"


async def get(bot: ImagineBot | str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(ops_url(bot, path))


class Scrape:
    """One /metrics answer, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels` (0 if none)."""
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def by(self, name: str, label: str) -> dict[str, float]:
        totals: dict[str, float] = collections.defaultdict(float)
        for s in self.samples:
            if s.name == name and s.value:
                totals[s.labels[label]] += s.value
        return dict(totals)

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.samples)


async def scrape(bot: ImagineBot | str) -> Scrape:
    response = await get(bot, "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


async def readyz(bot: ImagineBot | str) -> tuple[int, dict[str, Any]]:
    response = await get(bot, "/readyz")
    return response.status_code, response.json()


def failing(body: dict[str, Any]) -> dict[str, str]:
    return {name: check["detail"] for name, check in body["checks"].items() if not check["ok"]}


async def ledger(bot: ImagineBot, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    assert bot.pipeline is not None
    return [dict(row) for row in await bot.pipeline.store.fetch_all(sql, params)]


async def until(check: Any, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {check}"
        await asyncio.sleep(0.02)
    return result


def imagine(harness: BotHarness, prompt: str, user_id: int) -> SentInteraction:
    return harness.slash("imagine", {"prompt": prompt}, user_id=user_id)


# -- the figures against the ledger --------------------------------------------------------------------------
@pytest.mark.both_backends
async def test_a_scrape_during_a_run_agrees_with_the_ledger(harness: BotHarness, backend: str) -> None:
    bot = await harness.start(metrics_port=0, user_daily_limit=2)
    api = harness.api

    # A generation in flight shows as one request in flight.
    api.latency_s = 1.0
    first = imagine(harness, "A red kite over the sea", USER_ID)
    await harness.discord.wait_for(lambda _: api.requests and api.requests[0].status is None)
    assert (await scrape(bot)).value("imagine_upstream_requests_in_flight") == 1
    await harness.result(first)
    api.latency_s = 0.0

    # A 429 first (retried inside the job), then the image.
    api.script(Reply.error(429, retry_after=0))
    second = imagine(harness, "A green kite over the hills", OTHER_ID)
    await harness.result(second, timeout=20)
    # The provider refuses a prompt: the job fails (nothing charged).
    api.script(Reply.content_rejected())
    refused_upstream = imagine(harness, "A kite the provider refuses", USER_ID)
    assert (await harness.job(refused_upstream.id)).state == "failed"
    # An identical request: a cache hit, free.
    hit = imagine(harness, "A red kite over the sea", THIRD_ID)
    message = await harness.result(hit)
    # USER's second image of the day (the failure was given back), then the daily limit refuses.
    await harness.result(imagine(harness, "A blue kite at dusk", USER_ID))
    refusal = await private_refusal(harness, imagine(harness, "One kite too many", USER_ID))
    assert refusal.startswith("You have used your 2 image(s) for today")
    # A button: counted by its action, never by the job id in its custom id.
    harness.discord.click(message.id, f"imagine:details:{hit.id}", user_id=THIRD_ID)

    jobs = await ledger(bot, "SELECT * FROM jobs")
    refusals = await until(lambda: ledger(bot, "SELECT reason FROM refusals"))
    metrics = await until(lambda: _scrape_with(bot, "discord_event_on_interaction_total", interaction="component"))

    delivered = [j for j in jobs if j["state"] == "delivered"]
    failed = [j for j in jobs if j["state"] == "failed"]
    assert len(delivered) == 4 and len(failed) == 1  # the scenario happened as planned
    assert metrics.value("imagine_jobs_delivered_total") == len(delivered)
    assert metrics.by("imagine_jobs_delivered_total", "cache") == dict(
        collections.Counter("hit" if j["cache_hit"] else "miss" for j in delivered)
    )
    assert metrics.value("imagine_spent_fen_total") == sum(j["cost_fen"] for j in jobs) == 3 * 18
    assert metrics.value("imagine_upstream_billed_fen_total") == sum(j["upstream_fen"] for j in jobs)
    causes = collections.Counter(j["error_code"] for j in failed)
    assert metrics.by("imagine_jobs_failed_total", "cause") == dict(causes) == {"ContentRejected": 1}
    assert metrics.by("imagine_requests_refused_total", "reason") == dict(
        collections.Counter(r["reason"] for r in refusals)
    )
    assert metrics.value("imagine_request_to_image_seconds_count") == len(delivered)

    # The upstream: every attempt the fake received, by its answer; the 429 counted once.
    answered = collections.Counter(r.status for r in api.requests)
    assert metrics.value("imagine_upstream_request_seconds_count") == len(api.requests) == 5
    assert metrics.value("imagine_upstream_request_seconds_count", outcome="ok") == answered[200] == 3
    assert metrics.value("imagine_upstream_429_total") == answered[429] == 1
    assert metrics.value("imagine_upstream_requests_in_flight") == 0

    # Discord: the names operators chart.
    assert metrics.value("discord_event_on_interaction_total", interaction="application_command") == 6
    assert metrics.value("discord_event_on_interaction_total", command="imagine", shard="0") == 6
    assert metrics.value("discord_event_on_interaction_total", interaction="component", command="details") == 1
    assert metrics.value("discord_connected", shard="0") == 1
    assert metrics.value("discord_stat_total_guilds") == len(harness.discord.guilds) == 1

    # Nothing waits now; the loop was watched.
    assert metrics.value("imagine_queue_depth") == 0 and metrics.value("imagine_jobs_running") == 0
    assert metrics.value("imagine_event_loop_lag_seconds_count") >= 1

    # No guild, channel, user or job id anywhere in the scrape (names, labels, comments; a value's
    # digits could hold any short number by chance).
    ids = {harness.discord.guild_id, harness.discord.channel_id, USER_ID, OTHER_ID, THIRD_ID}
    ids |= {j["id"] for j in jobs}
    without_values = "\n".join(line.rsplit(" ", 1)[0] for line in metrics.text.splitlines() if line)
    assert [i for i in ids if str(i) in without_values] == []
    readiness = (await get(bot, "/readyz")).text
    for secret in (TEST_API_KEY, harness.discord.bot_token):
        assert secret not in metrics.text and secret not in readiness


async def _scrape_with(bot: ImagineBot, name: str, **labels: str) -> Scrape | None:
    metrics = await scrape(bot)
    return metrics if metrics.value(name, **labels) else None


# -- the queue, as it waits ----------------------------------------------------------------------------------
async def test_the_queue_gauges_show_the_jobs_waiting_behind_a_running_one(harness: BotHarness) -> None:
    bot = await harness.start(metrics_port=0, upstream_concurrency=1)
    harness.api.script(Reply.hang())  # the first generation never answers: the others wait behind it
    began = time.monotonic()
    sent = [imagine(harness, f"A lantern, number {n}", user_id) for n, user_id in enumerate((USER_ID, OTHER_ID))]
    sent.append(imagine(harness, "A lantern, number 3", THIRD_ID))

    async def two_waiting() -> list[dict[str, Any]] | None:
        states = await ledger(bot, "SELECT state, queued_at FROM jobs")
        return states if sorted(s["state"] for s in states) == ["queued", "queued", "submitting"] else None

    jobs = await until(two_waiting)
    metrics = await scrape(bot)
    assert metrics.value("imagine_queue_depth") == 2
    assert metrics.value("imagine_jobs_running") == 1
    assert metrics.value("imagine_upstream_requests_in_flight") == 1
    assert 0 < metrics.value("imagine_queue_oldest_wait_seconds") <= time.monotonic() - began + 1
    assert len(jobs) == len(sent)


# -- health ----------------------------------------------------------------------------------------------------
async def test_livez_answers_and_readyz_is_ready_when_all_is_well(harness: BotHarness) -> None:
    bot = await harness.start(metrics_port=0)
    live = await get(bot, "/livez")
    assert (live.status_code, live.text) == (200, "ok\n")
    status, body = await readyz(bot)
    assert status == 200 and body["ready"] is True
    assert set(body["checks"]) == {"gateway", "store", "dispatcher", "upstream"} and failing(body) == {}


async def test_while_the_bot_stops_readyz_says_so_and_the_probes_answer_until_the_end(harness: BotHarness) -> None:
    bot = await harness.start(metrics_port=0, shutdown_grace_s=5)
    harness.api.latency_s = 1.5
    sent = imagine(harness, "A kite landing", USER_ID)
    await harness.discord.wait_for(lambda _: harness.api.requests)  # its request is with the provider
    closing = asyncio.create_task(bot.close())  # SIGTERM: that request finishes first
    status, body = await until(lambda: _unready(bot))
    assert failing(body) == {"dispatcher": "stopping: new requests are refused"}  # still connected meanwhile
    assert (await get(bot, "/livez")).status_code == 200
    await closing
    assert (await harness.result(sent)).attachments  # the request in flight finished and was delivered
    assert bot.ops_server is not None and bot.ops_server.port not in {port for _, port in listening_sockets()}


async def test_readyz_fails_while_the_store_is_read_only(harness: BotHarness) -> None:
    """Made read-only the way SQLite itself does it (PRAGMA query_only on the store's writing
    connection): these tests run as root, and root writes through a chmod-ed file anyway (so
    does any process that opened the file before the chmod)."""
    bot = await harness.start(metrics_port=0)
    assert bot.pipeline is not None
    writer = bot.pipeline.store._writer  # type: ignore[attr-defined]  # the one connection that writes
    await writer.execute("PRAGMA query_only = ON")
    status, body = await readyz(bot)
    assert status == 503 and body["ready"] is False
    assert list(failing(body)) == ["store"] and "readonly" in failing(body)["store"]
    await writer.execute("PRAGMA query_only = OFF")
    assert (await readyz(bot))[0] == 200


@pytest.mark.both_backends
async def test_readyz_fails_while_another_holds_the_store_s_write_lock(
    harness: BotHarness, backend: str, database_url: str
) -> None:
    """A backup, a migration or a stuck session elsewhere holding the lock: no write can commit."""
    bot = await harness.start(metrics_port=0)
    if backend == "sqlite":
        other = sqlite3.connect(bot.settings.database_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # SQLite's one write lock
        release = other.rollback
    else:
        other = await asyncpg.connect(database_url)
        await other.execute("BEGIN; LOCK TABLE meta IN EXCLUSIVE MODE")  # reads go on, writes wait

        async def release() -> None:
            await other.execute("ROLLBACK")

    try:
        status, body = await readyz(bot)
        assert status == 503 and list(failing(body)) == ["store"]
        assert "did not commit within 2 s" in failing(body)["store"]
    finally:
        result = release()
        if asyncio.iscoroutine(result):
            await result
    assert await until(lambda: _ready(bot))  # the waiting write commits, and the next probe too
    if isinstance(other, sqlite3.Connection):
        other.close()
    else:
        await other.close()


async def _ready(bot: ImagineBot | str) -> bool:
    return (await readyz(bot))[0] == 200


async def test_readyz_fails_when_the_dispatcher_is_stopped(harness: BotHarness) -> None:
    bot = await harness.start(metrics_port=0)
    assert (await readyz(bot))[0] == 200
    await bot.service.scheduler.stop(0)
    status, body = await readyz(bot)
    assert status == 503 and failing(body) == {"dispatcher": "the dispatch loop is not running: no job can start"}


async def test_readyz_fails_while_the_upstream_is_paused_for_long(harness: BotHarness) -> None:
    """A 429 whose Retry-After (120 s) is past UPSTREAM_RETRY_AFTER_CAP_S pauses every start that long."""
    bot = await harness.start(metrics_port=0)
    harness.api.script(Reply.error(429, retry_after=120))
    imagine(harness, "A kite in a storm", USER_ID)
    await harness.discord.wait_for(lambda _: harness.api.requests and harness.api.requests[0].status == 429)
    status, body = await until(lambda: _unready(bot))
    assert list(failing(body)) == ["upstream"] and "paused for 1" in failing(body)["upstream"]
    metrics = await scrape(bot)
    assert metrics.value("imagine_upstream_429_total") == 1
    assert 60 < metrics.value("imagine_upstream_pause_seconds") <= 120
    assert metrics.value("imagine_queue_depth") == 1  # the job went back to wait for the pause to end


async def _unready(bot: ImagineBot) -> tuple[int, dict[str, Any]] | None:
    status, body = await readyz(bot)
    return (status, body) if status == 503 else None


async def test_the_event_loop_lag_shows_a_blocking_call(harness: BotHarness) -> None:
    bot = await harness.start(metrics_port=0)
    time.sleep(0.6)  # blocks the loop, as a synchronous call in a handler would  # noqa: ASYNC251
    await asyncio.sleep(0.3)  # the monitor wakes late, observes, and sleeps again
    metrics = await scrape(bot)
    late = metrics.value("imagine_event_loop_lag_seconds_count") - metrics.value(
        "imagine_event_loop_lag_seconds_bucket", le="0.1"
    )
    assert late >= 1  # at least one wake-up more than 100 ms late


# -- where it listens ------------------------------------------------------------------------------------------
def listening_sockets() -> set[tuple[str, int]]:
    """(local address, port) of the TCP sockets this process listens on (Linux /proc)."""
    ours = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            ours.add(target[len("socket:[") : -1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in ours:  # 0A: LISTEN
                address, port = local.split(":")
                found.add((_address(address), int(port, 16)))
    return found


def _address(hex_address: str) -> str:
    if len(hex_address) == 8:  # IPv4, little-endian
        return ".".join(str(b) for b in reversed(bytes.fromhex(hex_address)))
    return "ipv6:" + hex_address


async def test_without_metrics_port_no_port_is_bound(harness: BotHarness) -> None:
    before = listening_sockets()
    bot = await harness.start()
    assert bot.ops_server is None
    assert listening_sockets() == before


async def test_metrics_port_binds_one_port_on_loopback_until_the_bot_stops(harness: BotHarness) -> None:
    before = listening_sockets()
    bot = await harness.start(metrics_port=0)
    assert bot.ops_server is not None
    assert listening_sockets() - before == {("127.0.0.1", bot.ops_server.port)}
    await harness.stop()
    assert listening_sockets() == before


async def test_metrics_host_chooses_the_address(harness: BotHarness) -> None:
    bot = await harness.start(metrics_port=0, metrics_host="127.0.0.2")
    assert bot.ops_server is not None and bot.ops_server.port
    assert (await get(bot, "/livez")).status_code == 200
    with pytest.raises(httpx.ConnectError):  # the default address is not bound
        async with httpx.AsyncClient(timeout=5) as client:
            await client.get(f"http://127.0.0.1:{bot.ops_server.port}/livez")


async def test_a_port_in_use_stops_the_start_with_one_clear_line(harness: BotHarness) -> None:
    taken = int(harness.api.base_url.split(":")[-1].split("/")[0])  # the fake image API listens there
    bot = ImagineBot(harness.settings(metrics_port=taken), guild_ready_timeout=0.05)
    try:
        with pytest.raises(ConfigError) as caught:
            await bot.start(harness.discord.bot_token)
    finally:
        await bot.close()
    assert caught.value.message.startswith(f"METRICS_PORT {taken} cannot be used on METRICS_HOST 127.0.0.1")


# -- several processes ---------------------------------------------------------------------------------------
@ON_POSTGRES
async def test_each_shard_process_serves_its_own_figures_and_together_they_match_the_ledger(
    tmp_path: Path, fake_api: FakeImageApi, database_url: str
) -> None:
    guilds = [FakeGuild.on_shard(n % SHARDS, SHARDS, name=f"Guild {n}") for n in range(4)]
    with FakeDiscord(guilds=guilds) as fake:
        bots = Processes(tmp_path, fake, fake_api, database_url)
        try:
            processes = []
            for shard in range(SHARDS):  # one after the other: the first migrates the fresh schema
                processes.append(bots.start(f"shard-{shard}", SHARD_IDS=str(shard), METRICS_PORT="0"))
                await bots.shard_ready(shard)
            urls = [await bots.until(lambda p=p: _served_at(p.log_text())) for p in processes]
            sent = [
                fake.send_slash("imagine", {"prompt": f"A harbour at dawn, {n}"}, guild_id=g.id, user_id=1000 + n)
                for n, g in enumerate(fake.guilds)
            ]
            rows = await until_all(bots, sent)
            delivered = [r for r in rows.values() if r["state"] == "delivered"]
            assert len(delivered) == len(sent)

            async def all_counted() -> list[Scrape] | None:
                scrapes = [await scrape(url) for url in urls]
                counted = sum(s.value("imagine_jobs_delivered_total") for s in scrapes)
                return scrapes if counted == len(delivered) else None

            scrapes = await until(all_counted)
            assert sum(s.value("imagine_spent_fen_total") for s in scrapes) == sum(r["cost_fen"] for r in delivered)
            for shard, (url, figures) in enumerate(zip(urls, scrapes, strict=True)):
                assert await until(lambda url=url: _ready(url))  # once its guilds have arrived
                own = {g.id for g in fake.guilds if shard_of(g.id, SHARDS) == shard}
                assert {s.labels["shard"] for s in figures.samples if s.name == "discord_connected"} == {str(shard)}
                assert figures.value("discord_stat_total_guilds") == len(own) == 2
                interactions = [s for s in figures.samples if s.name == "discord_event_on_interaction_total"]
                assert {s.labels["shard"] for s in interactions} == {str(shard)}
                assert sum(s.value for s in interactions) == len(own)  # only its own guilds' commands
        finally:
            bots.kill_all()


def _served_at(log_text: str) -> str | None:
    found = re.search(r"metrics and health probes on (http://[\d.]+:\d+)", log_text)
    return found.group(1) if found else None


# -- the documentation -----------------------------------------------------------------------------------------
async def test_every_metric_served_is_documented_in_the_readme_with_its_type(harness: BotHarness) -> None:
    bot = await harness.start(metrics_port=0)
    text = (await get(bot, "/metrics")).text
    served = {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for family in text_string_to_metric_families(text)
        if not family.name.startswith(("process_", "python_"))  # prometheus_client's standard ones
    }
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    documented = dict(re.findall(r"^\| `([a-z0-9_]+)` \| (gauge|counter|histogram) \|", readme, re.MULTILINE))
    assert served == documented
