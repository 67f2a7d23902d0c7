"""Issue 8.2 and 8.4: the limiter counts what the provider counts, and every process using the
same store shares one upstream budget. The fake image API enforces the provider's limits (exact
per-minute and per-second windows, requests in flight) and counts each 429 it had to send: the
bot must never earn one of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bot.config import Settings
from bot.contracts import Requester
from bot.pipeline import Pipeline
from bot.rate_windows import Limits, LocalView
from bot.requests import RequestBuilder
from bot.storage.db import SqliteStore, Store
from bot.storage.upstream import LEASE_S, SharedBudget
from tests.fakes.image_api import FakeImageApi
from tests.test_cli import run_cli
from tests.test_service import RecordingDelivery


async def hog_the_store(store: Store, hold_s: float = 0.6, gap_s: float = 0.01) -> None:
    """Keep the store's write lock busy, as a server full of admissions does: a write a job makes
    between its permit and its request waits up to `hold_s`, so requests leave late and unevenly."""
    while True:
        async with store.transaction():
            await asyncio.sleep(hold_s)
        await asyncio.sleep(gap_s)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Pipeline]:
    pipeline = await Pipeline.open(settings, RecordingDelivery(), max_requeues=0)
    await pipeline.service.start(resume=False)
    try:
        yield pipeline
    finally:
        await pipeline.close(grace_s=5)


async def generate_all(pipeline: Pipeline, prompts: list[str]) -> None:
    builder = RequestBuilder(pipeline.settings)
    tickets = [
        await pipeline.service.submit(builder.imagine(prompt), Requester(f"user-{n}"))
        for n, prompt in enumerate(prompts)
    ]
    jobs = await asyncio.wait_for(asyncio.gather(*(pipeline.service.wait(t.job_id) for t in tickets)), 60)
    assert [job.state for job in jobs] == ["delivered"] * len(prompts), [job.error_message for job in jobs]


@pytest.mark.exact_limits
async def test_a_busy_store_between_permit_and_request_earns_no_429(
    make_settings: Callable[..., Settings], fake_api: FakeImageApi
) -> None:
    fake_api.rpm_limit, fake_api.concurrency_limit, fake_api.latency_s = 120, 4, 0.3
    settings = make_settings(upstream_rpm=120, upstream_concurrency=4, upstream_max_retries=0)
    async with running(settings) as pipeline:
        hog = asyncio.create_task(hog_the_store(pipeline.store))
        try:
            await generate_all(pipeline, [f"a lighthouse, take {n}" for n in range(14)])
        finally:
            hog.cancel()
            await asyncio.gather(hog, return_exceptions=True)
    assert fake_api.rate_limited_count == 0
    assert fake_api.generation_count == 14


@pytest.mark.exact_limits
@pytest.mark.both_backends
async def test_two_processes_on_one_store_share_one_upstream_budget(
    make_settings: Callable[..., Settings], fake_api: FakeImageApi
) -> None:
    """Two pipelines on the same database file stand for the bot and `imagine-bot generate`."""
    fake_api.rpm_limit, fake_api.concurrency_limit, fake_api.latency_s = 120, 4, 0.2
    settings = make_settings(upstream_rpm=120, upstream_concurrency=4, upstream_max_retries=0)
    async with running(settings) as bot, running(settings) as cli:
        await asyncio.gather(
            generate_all(bot, [f"bot picture {n}" for n in range(8)]),
            generate_all(cli, [f"cli picture {n}" for n in range(8)]),
        )
    assert fake_api.rate_limited_count == 0
    assert fake_api.generation_count == 16


@pytest.mark.exact_limits
async def test_imagine_bot_generate_beside_a_busy_bot_earns_no_429(
    make_settings: Callable[..., Settings], fake_api: FakeImageApi, tmp_path: Path
) -> None:
    """The real CLI, as its own process, while a pipeline on the same store keeps the upstream busy."""
    fake_api.rpm_limit, fake_api.concurrency_limit, fake_api.latency_s = 60, 2, 0.2  # one start a second
    settings = make_settings(upstream_rpm=60, upstream_concurrency=2, upstream_max_retries=0)
    async with running(settings) as bot:
        busy = asyncio.create_task(generate_all(bot, [f"bot picture {n}" for n in range(6)]))
        await asyncio.sleep(0.5)
        results = await asyncio.gather(
            *(
                asyncio.to_thread(
                    run_cli, tmp_path, fake_api, "generate", f"cli picture {n}", "-o", f"cli-{n}.png",
                    UPSTREAM_RPM="60", UPSTREAM_CONCURRENCY="2", UPSTREAM_MAX_RETRIES="0",
                )
                for n in range(2)
            )
        )  # fmt: skip
        await busy
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert fake_api.rate_limited_count == 0
    assert fake_api.generation_count == 8


async def test_a_dead_process_stops_holding_a_slot_when_its_lease_runs_out(tmp_path: Path) -> None:
    wall = [1_000_000.0]
    url = f"sqlite:///{tmp_path / 'imagine.db'}"
    store = await SqliteStore.open(tmp_path / "imagine.db")
    dead = await SharedBudget.open(url, store, now=lambda: wall[0])  # two processes
    alive = await SharedBudget.open(url, store, now=lambda: wall[0])
    limits = Limits(concurrency=1, rpm=600, per_second=10, margin_s=0.05)
    idle = LocalView(now=0.0, held=0, starts=(), pending=(), paused_until=-math.inf)
    try:
        assert (await dead.try_grant(limits, idle)).permit_id is not None
        await dead.flush()  # its process is SIGKILLed: no renewal, no release
        wall[0] += 1.0
        refused = await alive.try_grant(limits, idle)
        assert refused.permit_id is None and refused.full
        wall[0] += LEASE_S
        assert (await alive.try_grant(limits, idle)).permit_id is not None
    finally:
        await alive.close()
        await dead.close()
        await store.close()
