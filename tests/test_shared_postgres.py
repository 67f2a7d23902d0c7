"""Issue 9: several bot processes on one PostgreSQL, each with its own connections, limiter and
scheduler (here: pipelines in one test process, each with a pool of its own, which is all a
process shares with another through the database), against one fake upstream that enforces the
account's limits. Real PostgreSQL, real HTTP; every guarantee must hold across processes:
the per-user limit, the server budget, the upstream's limits, the fair order, and a dead
process's jobs finished by another.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from bot.config import Settings
from bot.contracts import Requester
from bot.errors import LimitReached
from bot.pipeline import Pipeline
from bot.requests import RequestBuilder
from tests.fakes.image_api import FakeImageApi
from tests.test_cli import run_cli
from tests.test_service import RecordingDelivery

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)

GUILD, OTHER_GUILD, CHANNEL = 1, 2, 10
NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
_pictures = itertools.count(1)


def member(user_id: int, guild_id: int = GUILD) -> Requester:
    return Requester(str(user_id), guild_id=guild_id, channel_id=CHANNEL, user_id=user_id)


def picture(settings: Settings, prompt: str | None = None):
    return RequestBuilder(settings).imagine(prompt or f"a lighthouse, take {next(_pictures)}")


@contextlib.asynccontextmanager
async def processes(settings: Settings, n: int = 2) -> AsyncIterator[list[Pipeline]]:
    opened = [await Pipeline.open(settings, RecordingDelivery(), wall_clock=lambda: NOON) for _ in range(n)]
    try:
        for pipeline in opened:
            await pipeline.service.start()
        yield opened
    finally:
        for pipeline in opened:
            await pipeline.close(grace_s=2)


async def test_fifty_users_twenty_requests_each_over_two_processes_limit_five_is_exactly_250(
    make_settings: Callable[..., Settings], fake_api: FakeImageApi
) -> None:
    fake_api.latency_s = 30  # nothing finishes meanwhile: every accepted job holds its reservation
    settings = make_settings(
        user_daily_limit=5, user_pending_max=100, guild_queue_max=1000, guild_daily_budget_cny="none"
    )
    async with processes(settings) as (first, second):

        async def one(n: int) -> bool:
            pipeline = (first, second)[n % 2]
            try:
                await pipeline.service.submit(picture(settings), member(1000 + n // 20))
            except LimitReached:
                return False
            return True

        accepted = await asyncio.gather(*(one(n) for n in range(1000)))
        assert sum(accepted) == 250
        rows = await first.store.fetch_all("SELECT user_id, COUNT(*) AS n FROM jobs GROUP BY user_id ORDER BY user_id")
        assert [int(r["n"]) for r in rows] == [5] * 50
        for pipeline in (first, second):
            pipeline.service.force_stop()


async def test_a_server_budget_is_never_exceeded_by_even_one_image_across_processes(
    make_settings: Callable[..., Settings], fake_api: FakeImageApi
) -> None:
    fake_api.latency_s = 30
    settings = make_settings(guild_daily_budget_cny="1.80", user_pending_max=100, guild_queue_max=1000)  # 10 images
    async with processes(settings) as (first, second):

        async def one(n: int) -> bool:
            try:
                await (first, second)[n % 2].service.submit(picture(settings), member(2000 + n))
            except LimitReached:
                return False
            return True

        assert sum(await asyncio.gather(*(one(n) for n in range(60)))) == 10
        row = await first.store.fetch_one("SELECT used FROM quota_counters WHERE scope = 'guild_day_fen'")
        assert int(row["used"]) == 180
        for pipeline in (first, second):
            pipeline.service.force_stop()


@pytest.mark.exact_limits
async def test_two_processes_stay_within_the_upstream_limits_and_deliver_every_job_once(
    make_settings: Callable[..., Settings], fake_api: FakeImageApi
) -> None:
    fake_api.rpm_limit, fake_api.concurrency_limit, fake_api.latency_s = 120, 3, 0.3
    settings = make_settings(upstream_rpm=120, upstream_concurrency=3, upstream_max_retries=0, user_pending_max=50)
    async with processes(settings) as (first, second):
        tickets = []
        for n in range(16):
            pipeline = (first, second)[n % 2]
            tickets.append((pipeline, await pipeline.service.submit(picture(settings), member(3000 + n % 4))))
        jobs = [await asyncio.wait_for(p.service.wait(t.job_id), 30) for p, t in tickets]
        rows = await first.store.fetch_all("SELECT claimed_by FROM jobs")
    assert [j.state for j in jobs] == ["delivered"] * 16
    assert fake_api.rate_limited_count == 0 and fake_api.generation_count == 16
    assert len({r["claimed_by"] for r in rows}) == 2  # both processes took jobs from the one queue


async def test_a_light_guild_starts_within_one_turn_whichever_process_it_arrived_at(
    make_settings: Callable[..., Settings], fake_api: FakeImageApi
) -> None:
    fake_api.latency_s = 0.2
    settings = make_settings(upstream_concurrency=1, user_pending_max=50)
    async with processes(settings) as (first, second):
        flood = [await first.service.submit(picture(settings, f"flood {n}"), member(4000)) for n in range(12)]
        for _ in range(200):  # the flood is under way
            if len(fake_api.requests) >= 2:
                break
            await asyncio.sleep(0.02)
        started_before = len(fake_api.requests)
        light = await second.service.submit(picture(settings, "light"), member(4001, OTHER_GUILD))
        await asyncio.wait_for(second.service.wait(light.job_id), 20)
        prompts = [r.json["prompt"] for r in fake_api.requests]
        # it arrived while flood job #started_before was running: at most one more flood job before it
        assert prompts.index("light") <= started_before + 1, prompts
        for ticket in flood:
            await asyncio.wait_for(first.service.wait(ticket.job_id), 30)


async def test_a_dead_processs_jobs_are_finished_by_the_other_within_the_lease(
    make_settings: Callable[..., Settings], fake_api: FakeImageApi
) -> None:
    """One process dies (nothing graceful: no hand-back, no more lease renewals) with a job
    generating and others queued behind it: the other finishes all of them, once each."""
    fake_api.latency_s = 1.0
    settings = make_settings(upstream_concurrency=1, job_lease_s=5, user_pending_max=50)
    dying = await Pipeline.open(settings, RecordingDelivery(), wall_clock=lambda: NOON)
    await dying.service.start()
    tickets = [await dying.service.submit(picture(settings), member(5000 + n)) for n in range(4)]
    for _ in range(200):
        if fake_api.requests:
            break
        await asyncio.sleep(0.02)
    await die(dying)
    survivor = await Pipeline.open(settings, RecordingDelivery(), wall_clock=lambda: NOON)
    try:
        await survivor.service.start()
        started = asyncio.get_running_loop().time()
        jobs = [await asyncio.wait_for(survivor.service.wait(t.job_id), 20) for t in tickets]
        took = asyncio.get_running_loop().time() - started
    finally:
        await survivor.close(grace_s=2)
    assert [j.state for j in jobs] == ["delivered"] * 4
    assert took < settings.job_lease_s + 5
    caught = [j for j in jobs if j.attempts == 2]
    assert len(caught) <= 1  # only the one in flight at the death was sent again
    assert fake_api.generation_count <= 4 + 1


async def die(pipeline: Pipeline) -> None:
    """As a SIGKILL would: every task stops where it is, nothing is written, the connections go."""
    service = pipeline.service
    service.scheduler.force()
    for task in list(service.background.tasks):
        task.cancel()
    await service.scheduler._stop_loops()  # type: ignore[attr-defined]
    await pipeline.http.aclose()
    await pipeline.budget.close()
    await pipeline.store.close()


@pytest.mark.exact_limits
async def test_the_cli_beside_two_busy_processes_earns_no_429(
    make_settings: Callable[..., Settings], fake_api: FakeImageApi, database_url: str, tmp_path
) -> None:
    fake_api.rpm_limit, fake_api.concurrency_limit, fake_api.latency_s = 60, 2, 0.2  # one start a second
    limits = {"upstream_rpm": 60, "upstream_concurrency": 2, "upstream_max_retries": 0}
    settings = make_settings(**limits, user_pending_max=50)
    async with processes(settings) as (first, second):
        busy = [await (first, second)[n % 2].service.submit(picture(settings), member(6000 + n)) for n in range(6)]
        await asyncio.sleep(0.5)
        env = {"DATABASE_URL": database_url, "UPSTREAM_RPM": "60", "UPSTREAM_CONCURRENCY": "2"}
        result = await asyncio.to_thread(
            run_cli, tmp_path, fake_api, "generate", "the terminal's picture", "-o", "cli.png", **env,
            UPSTREAM_MAX_RETRIES="0",
        )  # fmt: skip
        for ticket in busy:
            await asyncio.wait_for(first.service.wait(ticket.job_id), 30)
    assert result.returncode == 0, result.stderr
    assert fake_api.rate_limited_count == 0 and fake_api.generation_count == 7


async def test_identical_requests_never_wait_on_a_job_another_process_runs(
    make_settings: Callable[..., Settings], fake_api: FakeImageApi
) -> None:
    """Single-flight followers live in the memory of the process that admitted them: on a shared
    queue the leader may run elsewhere, and its image would never reach them. So there, identical
    requests in flight each run (a cache hit, if the first has landed by then)."""
    fake_api.latency_s = 0.5
    settings = make_settings()
    admitting = await Pipeline.open(settings, RecordingDelivery(), wall_clock=lambda: NOON)  # admits, runs nothing
    try:
        async with processes(settings, n=1) as (worker,):
            first = await admitting.service.submit(picture(settings, "the same harbour"), member(7000))
            again = await admitting.service.submit(picture(settings, "the same harbour"), member(7001))
            jobs = [await asyncio.wait_for(worker.service.wait(t.job_id), 15) for t in (first, again)]
    finally:
        await admitting.close(grace_s=1)
    assert [j.state for j in jobs] == ["delivered", "delivered"]


async def test_status_counts_a_guilds_jobs_in_every_process_and_the_upstream_of_its_own(
    make_settings: Callable[..., Settings], fake_api: FakeImageApi
) -> None:
    """/imagine-admin status on a shared queue: a process that admitted nothing and runs nothing
    still sees the guild's queue (from the store); requests in flight are each process's own."""
    fake_api.latency_s = 5  # the first job stays in flight while the status is read
    settings = make_settings(upstream_concurrency=1, user_pending_max=10)
    admitting = await Pipeline.open(settings, RecordingDelivery(), wall_clock=lambda: NOON)  # admits, runs nothing
    try:
        async with processes(settings, n=1) as (worker,):
            for n in range(3):
                await admitting.service.submit(picture(settings), member(8000 + n))
            for _ in range(500):
                if fake_api.requests:
                    break
                await asyncio.sleep(0.02)
            seen = [await p.status.guild(GUILD, "8999") for p in (admitting, worker)]
            worker.service.force_stop()
    finally:
        admitting.service.force_stop()
        await admitting.close(grace_s=0)
    for status in seen:
        assert (status.shared_queue, status.queue.waiting, status.queue.running) == (True, 2, 1)
        assert status.spend.today_fen == 3 * 18  # every accepted job reserved its price
    assert [s.upstream.in_flight for s in seen] == [0, 1]
