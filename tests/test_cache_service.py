"""The result cache inside the generation service: real store, real client, the fake image API.

Hits, misses, the time-to-live (an injected wall clock), eviction by size, corrupt files,
identical requests in flight sharing one upstream call (single-flight), reroll bypass, guilds
turning the cache off, limits and budgets, the ledger, and a follower resumed after a restart.
A recording `Delivery` stands in for Discord (tests/discord/test_cache.py covers the bot).
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.config import Settings
from bot.contracts import Requester
from bot.errors import LimitReached
from bot.imaging.errors import ServerError
from bot.pipeline import Pipeline
from bot.requests import GenerationRequest, RequestBuilder
from bot.scheduler import QueuePosition
from bot.storage.connect import open_store
from bot.storage.db import Store
from bot.storage.images import OpenImage
from bot.storage.jobs import Job, JobStore, NewJob
from bot.storage.reports import usage_summary
from tests.fakes.image_api import FakeImageApi, Reply
from tests.fakes.png import png_size
from tests.images import read_image

pytestmark = pytest.mark.both_backends
#: followers wait in the memory of the process that admitted them; on a queue shared by several
#: processes (PostgreSQL) the leader may run elsewhere, so there identical requests each run
SINGLE_FLIGHT = pytest.mark.sqlite_only

GUILD, OTHER_GUILD, CHANNEL, ADMIN = 1, 3, 2, 99
PROMPT = "A red lantern over a snowy street"
NOON = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


class RecordingDelivery:
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.delivered: dict[int, bytes] = {}
        self.failures: dict[int, BaseException] = {}

    async def queued(self, job: Job, position: QueuePosition) -> None:
        self.events.append(("queued", job.id))

    async def started(self, job: Job) -> None:
        self.events.append(("started", job.id))

    async def deliver(self, job: Job, image: OpenImage) -> None:
        self.events.append(("delivered", job.id))
        self.delivered[job.id] = await asyncio.to_thread(read_image, image)

    async def failed(self, job: Job, error: BaseException) -> None:
        self.events.append(("failed", job.id))
        self.failures[job.id] = error

    async def moderation(self, channel_id: int, text: str) -> None:
        self.events.append(("moderation", channel_id))


class WallClock:
    """The injected UTC clock of the cache, the store and the limits; moves only when told."""

    def __init__(self, start: datetime = NOON) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def member(user_id: int = 42, guild_id: int = GUILD) -> Requester:
    return Requester(str(user_id), guild_id=guild_id, channel_id=CHANNEL, user_id=user_id)


CLI = Requester("cli")


@pytest.fixture
def clock() -> WallClock:
    return WallClock()


@pytest.fixture
def delivery() -> RecordingDelivery:
    return RecordingDelivery()


@pytest.fixture
def settings_for(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        return make_settings(**{"upstream_rpm": 6000, "upstream_concurrency": 2, **overrides})

    return build


@asynccontextmanager
async def running(
    settings: Settings, delivery: RecordingDelivery, clock: WallClock | None = None, *, resume: bool = True
) -> AsyncIterator[Pipeline]:
    pipeline = await Pipeline.open(settings, delivery, wall_clock=clock or WallClock())
    await pipeline.service.start(resume=resume)
    try:
        yield pipeline
    finally:
        await pipeline.close(grace_s=2)


@pytest.fixture
async def pipeline(settings_for, delivery, clock) -> AsyncIterator[Pipeline]:
    async with running(settings_for(), delivery, clock) as pipeline:
        yield pipeline


def imagine(settings: Settings, prompt: str = PROMPT, **choices: Any) -> GenerationRequest:
    return RequestBuilder(settings).imagine(prompt, **choices)


async def make(pipeline: Pipeline, request: GenerationRequest, who: Requester = CLI, job_id: int | None = None) -> Job:
    """Submit and wait until the job is delivered or failed."""
    ticket = await pipeline.service.submit(request, who, job_id=job_id)
    return await asyncio.wait_for(pipeline.service.wait(ticket.job_id), 10)


async def counter(pipeline: Pipeline, scope: str, subject: str) -> int:
    row = await pipeline.store.fetch_one(
        "SELECT COALESCE(SUM(used), 0) FROM quota_counters WHERE scope = ? AND subject = ?", (scope, subject)
    )
    assert row is not None
    return int(row[0])


async def cache_rows(pipeline: Pipeline) -> list[dict[str, Any]]:
    return [dict(r) for r in await pipeline.store.fetch_all("SELECT * FROM image_cache ORDER BY created_at, key")]


# -- hit ------------------------------------------------------------------------------------------------------


async def test_an_identical_request_is_answered_from_the_cache_without_an_upstream_call(
    pipeline: Pipeline, delivery: RecordingDelivery, fake_api: FakeImageApi
) -> None:
    settings = pipeline.settings
    first = await make(pipeline, imagine(settings), member(42), job_id=1)
    ticket = await pipeline.service.submit(imagine(settings), member(43), job_id=2)
    second = await asyncio.wait_for(pipeline.service.wait(2), 10)
    assert fake_api.generation_count == 1
    assert ticket.cached and ticket.position is None
    assert (first.cache_hit, first.cost_fen, first.upstream_fen) == (False, 18, 18)
    assert (second.state, second.cache_hit, second.cost_fen, second.upstream_fen) == ("delivered", True, 0, 0)
    assert second.image_sha256 == first.image_sha256
    assert second.request_id == first.request_id == fake_api.requests[0].request_id  # where the image came from
    assert delivery.delivered[2] == delivery.delivered[1] and png_size(delivery.delivered[2]) == (1328, 1328)
    assert ("started", 2) not in delivery.events  # nothing was generated for it


async def test_a_hit_does_not_count_toward_the_daily_limit_by_default(
    settings_for, delivery, clock, fake_api: FakeImageApi
) -> None:
    settings = settings_for(user_daily_limit=1)
    async with running(settings, delivery, clock) as pipeline:
        await make(pipeline, imagine(settings), member(42))
        again = await make(pipeline, imagine(settings), member(42))
        assert (again.state, again.cache_hit) == ("delivered", True)
        assert await counter(pipeline, "user_day", f"{GUILD}:42") == 1
        with pytest.raises(LimitReached) as refused:
            await pipeline.service.submit(imagine(settings, "something else entirely"), member(42))
        assert refused.value.limit == "user_day"
    assert fake_api.generation_count == 1


async def test_a_hit_counts_toward_the_daily_limit_when_the_guild_says_so(
    settings_for, delivery, clock, fake_api: FakeImageApi
) -> None:
    settings = settings_for(user_daily_limit=2)
    async with running(settings, delivery, clock) as pipeline:
        said = await pipeline.admin.set_cache(GUILD, ADMIN, enabled=None, counts=True)
        assert said == f"<@{ADMIN}> made cached images count toward image limits."
        await make(pipeline, imagine(settings), member(42))
        again = await make(pipeline, imagine(settings), member(42))
        assert (again.state, again.cache_hit, again.cost_fen) == ("delivered", True, 0)
        assert await counter(pipeline, "user_day", f"{GUILD}:42") == 2
        with pytest.raises(LimitReached) as refused:
            await pipeline.service.submit(imagine(settings), member(42))  # identical, but over the limit
        assert refused.value.limit == "user_day"
        assert await counter(pipeline, "guild_day_fen", str(GUILD)) == 18  # money: only the one generation
    assert fake_api.generation_count == 1


@pytest.mark.parametrize("counts", [False, True], ids=["default", "hits-count"])
async def test_the_guild_budget_is_never_charged_for_a_hit(
    settings_for, delivery, clock, fake_api: FakeImageApi, counts: bool
) -> None:
    settings = settings_for(guild_daily_budget_cny="0.18")  # exactly one generated image a day
    async with running(settings, delivery, clock) as pipeline:
        await pipeline.admin.set_cache(GUILD, ADMIN, enabled=None, counts=counts)
        await make(pipeline, imagine(settings), member(42))
        hit = await make(pipeline, imagine(settings), member(43))  # the budget is spent: a hit is still free
        assert (hit.state, hit.cache_hit, hit.cost_fen) == ("delivered", True, 0)
        assert await counter(pipeline, "guild_day_fen", str(GUILD)) == 18
        with pytest.raises(LimitReached) as refused:
            await pipeline.service.submit(imagine(settings, "a different picture"), member(43))
        assert refused.value.limit == "guild_day_fen"
    assert fake_api.generation_count == 1


# -- miss -----------------------------------------------------------------------------------------------------


def _variants(settings: Settings) -> dict[str, GenerationRequest]:
    base = imagine(settings).params
    return {
        "size": imagine(settings, size="1664*928"),
        "negative prompt": imagine(settings, negative_prompt="people, cars"),
        "prompt extend": imagine(settings, prompt_extend=not base.prompt_extend),
        "watermark": imagine(settings, watermark=not base.watermark),
        "prompt": imagine(settings, PROMPT + "!"),
    }


@pytest.mark.parametrize("change", ["size", "negative prompt", "prompt extend", "watermark", "prompt"])
async def test_changing_any_part_of_the_key_is_a_miss(pipeline: Pipeline, fake_api: FakeImageApi, change: str) -> None:
    settings = pipeline.settings
    await make(pipeline, imagine(settings))
    variant = _variants(settings)[change]
    assert variant.params != imagine(settings).params
    job = await make(pipeline, variant)
    assert fake_api.generation_count == 2
    assert (job.state, job.cache_hit, job.cost_fen) == ("delivered", False, 18)
    sent = fake_api.requests[1].json
    assert sent["prompt"] == variant.params.prompt and sent["parameters"]["size"] == variant.params.size


# -- time to live ---------------------------------------------------------------------------------------------


async def test_an_entry_expires_after_the_ttl_and_is_generated_again(
    settings_for, delivery, clock: WallClock, fake_api: FakeImageApi
) -> None:
    settings = settings_for(cache_ttl_hours=2)
    async with running(settings, delivery, clock) as pipeline:
        await make(pipeline, imagine(settings))
        clock.advance(hours=1, minutes=59)
        assert (await make(pipeline, imagine(settings))).cache_hit  # still fresh (a hit does not extend it)
        clock.advance(minutes=2)
        expired = await make(pipeline, imagine(settings))
        assert (expired.cache_hit, expired.cost_fen) == (False, 18)
        assert fake_api.generation_count == 2
        assert (await make(pipeline, imagine(settings))).cache_hit  # the new image is cached again
        [entry] = await cache_rows(pipeline)
        assert entry["source_job_id"] == expired.id
    assert fake_api.generation_count == 2


# -- eviction by size -----------------------------------------------------------------------------------------


async def test_the_least_recently_used_entry_is_evicted_past_the_size_cap(
    settings_for, delivery, clock: WallClock, fake_api: FakeImageApi
) -> None:
    settings = settings_for(cache_max_mb=1)
    cap = 1024 * 1024
    async with running(settings, delivery, clock) as pipeline:

        async def ask(prompt: str) -> Job:
            clock.advance(seconds=1)  # every use at its own instant: a strict LRU order
            return await make(pipeline, imagine(settings, prompt))

        await ask("A")  # created first...
        await ask("B")
        assert (await ask("A")).cache_hit  # ...but used again: B is now the least recently used
        fillers: list[str] = []
        while len(await cache_rows(pipeline)) == len(fillers) + 2:  # until the cap forces an eviction
            assert len(fillers) < 80, "the cache never evicted anything"
            fillers.append(f"filler {len(fillers)}")
            assert not (await ask(fillers[-1])).cache_hit
        keys = await cache_rows(pipeline)
        assert len(keys) == len(fillers) + 1  # exactly one entry made room
        assert sum(row["bytes"] for row in keys) <= cap
        assert sum(row["bytes"] for row in keys) + 60_000 > cap  # it was full, not emptied
        calls = fake_api.generation_count
        assert (await ask("A")).cache_hit and (await ask(fillers[-1])).cache_hit  # recent ones stay
        assert fake_api.generation_count == calls
        assert not (await ask("B")).cache_hit  # B was evicted: generated again
        assert fake_api.generation_count == calls + 1
        assert sum(row["bytes"] for row in await cache_rows(pipeline)) <= cap
        kept = {p.name for p in settings.cache_dir.rglob("*") if p.is_file()}
        assert kept == {row["sha256"] for row in await cache_rows(pipeline)}  # no orphan files on disk


# -- corrupt file ---------------------------------------------------------------------------------------------


async def test_a_corrupt_cached_file_is_a_miss_and_the_entry_is_rebuilt(
    pipeline: Pipeline, delivery: RecordingDelivery, fake_api: FakeImageApi
) -> None:
    settings = pipeline.settings
    first = await make(pipeline, imagine(settings))
    assert first.image_sha256 is not None
    path = settings.cache_dir / first.image_sha256[:2] / first.image_sha256
    path.write_bytes(path.read_bytes()[:500])  # torn
    again = await make(pipeline, imagine(settings))
    assert (again.state, again.cache_hit, again.cost_fen) == ("delivered", False, 18)
    assert fake_api.generation_count == 2
    assert png_size(delivery.delivered[again.id]) == (1328, 1328)
    assert path.read_bytes() == delivery.delivered[again.id]  # rewritten whole
    third = await make(pipeline, imagine(settings))
    assert third.cache_hit and delivery.delivered[third.id] == delivery.delivered[again.id]
    assert fake_api.generation_count == 2


# -- identical requests in flight ------------------------------------------------------------------------------


@SINGLE_FLIGHT
async def test_identical_requests_in_flight_share_one_upstream_call(
    pipeline: Pipeline, delivery: RecordingDelivery, fake_api: FakeImageApi
) -> None:
    settings = pipeline.settings
    fake_api.latency_s = 0.4
    users = range(101, 106)
    tickets = await asyncio.gather(*(pipeline.service.submit(imagine(settings), member(u), job_id=u) for u in users))
    jobs = [await asyncio.wait_for(pipeline.service.wait(u), 10) for u in users]
    assert fake_api.generation_count == 1 and len(fake_api.requests) == 1
    assert sorted(t.cached for t in tickets) == [False, True, True, True, True]
    assert {j.state for j in jobs} == {"delivered"}
    assert sorted((j.cache_hit, j.cost_fen, j.upstream_fen) for j in jobs) == [(False, 18, 18)] + [(True, 0, 0)] * 4
    assert len({delivery.delivered[u] for u in users}) == 1 and len(delivery.delivered) == 5
    assert await counter(pipeline, "guild_day_fen", str(GUILD)) == 18  # the followers' reservations given back
    assert [await counter(pipeline, "user_day", f"{GUILD}:{u}") for u in users].count(1) == 1


@SINGLE_FLIGHT
async def test_a_double_click_needs_no_extra_queue_slot(settings_for, delivery, clock, fake_api: FakeImageApi) -> None:
    settings = settings_for(user_pending_max=1)
    fake_api.latency_s = 0.3
    async with running(settings, delivery, clock) as pipeline:
        for job_id in (1, 2, 3):  # the same user, the same request, while the first is generating
            await pipeline.service.submit(imagine(settings), member(42), job_id=job_id)
        jobs = [await asyncio.wait_for(pipeline.service.wait(i), 10) for i in (1, 2, 3)]
    assert [(j.state, j.cache_hit) for j in jobs] == [("delivered", False), ("delivered", True), ("delivered", True)]
    assert fake_api.generation_count == 1


@SINGLE_FLIGHT
async def test_when_the_shared_call_fails_every_follower_fails_alike_and_uncharged(
    settings_for, delivery, clock, fake_api: FakeImageApi
) -> None:
    settings = settings_for(upstream_max_retries=0)
    fake_api.script(Reply.error(500, delay=2.0))  # all five are admitted while it runs
    users = range(101, 106)
    async with running(settings, delivery, clock) as pipeline:
        await asyncio.gather(*(pipeline.service.submit(imagine(settings), member(u), job_id=u) for u in users))
        jobs = [await asyncio.wait_for(pipeline.service.wait(u), 10) for u in users]
        assert len(fake_api.requests) == 1
        assert [(j.state, j.cost_fen, j.upstream_fen) for j in jobs] == [("failed", 0, 0)] * 5
        assert {(j.error_code, j.error_message) for j in jobs} == {(jobs[0].error_code, jobs[0].error_message)}
        assert {type(e) for e in delivery.failures.values()} == {ServerError} and len(delivery.failures) == 5
        assert await counter(pipeline, "guild_day_fen", str(GUILD)) == 0
        assert [await counter(pipeline, "user_day", f"{GUILD}:{u}") for u in users] == [0] * 5
        assert await cache_rows(pipeline) == []  # a failure is not cached


@SINGLE_FLIGHT
async def test_a_follower_is_not_refused_for_a_budget_it_will_never_spend(
    settings_for, delivery, clock, fake_api: FakeImageApi
) -> None:
    settings = settings_for(guild_daily_budget_cny="0.18")  # room for exactly the one generation
    fake_api.latency_s = 0.3
    users = (101, 102, 103)
    async with running(settings, delivery, clock) as pipeline:
        results = await asyncio.gather(
            *(pipeline.service.submit(imagine(settings), member(u), job_id=u) for u in users), return_exceptions=True
        )
        assert [type(r).__name__ for r in results] == ["Ticket"] * 3, results
        jobs = [await asyncio.wait_for(pipeline.service.wait(u), 10) for u in users]
        assert [(j.state, j.cache_hit) for j in jobs] == [
            ("delivered", False),
            ("delivered", True),
            ("delivered", True),
        ]
        assert await counter(pipeline, "guild_day_fen", str(GUILD)) == 18
    assert fake_api.generation_count == 1


async def test_after_a_failed_flight_an_identical_request_goes_upstream_again(
    pipeline: Pipeline, fake_api: FakeImageApi
) -> None:
    fake_api.script(Reply.content_rejected())
    assert (await make(pipeline, imagine(pipeline.settings), member(42))).state == "failed"
    job = await make(pipeline, imagine(pipeline.settings), member(43))
    assert (job.state, job.cache_hit, job.cost_fen) == ("delivered", False, 18)
    assert len(fake_api.requests) == 2


# -- reroll, guilds turning it off, the TTL of 0 --------------------------------------------------------------


async def test_a_reroll_bypasses_the_cache(pipeline: Pipeline, fake_api: FakeImageApi) -> None:
    settings = pipeline.settings
    first = await make(pipeline, imagine(settings), member(42))
    assert (await make(pipeline, imagine(settings), member(42))).cache_hit  # the key is cached
    reroll = await make(pipeline, RequestBuilder(settings).reroll(first), member(42))
    assert (reroll.state, reroll.cache_hit, reroll.cost_fen, reroll.reroll_of) == ("delivered", False, 18, first.id)
    assert fake_api.generation_count == 2
    assert fake_api.requests[1].json["prompt"] == PROMPT


async def test_a_guild_that_turns_the_cache_off_pays_for_each_request_and_another_keeps_it(
    pipeline: Pipeline, fake_api: FakeImageApi
) -> None:
    settings = pipeline.settings
    said = await pipeline.admin.set_cache(GUILD, ADMIN, enabled=False, counts=None)
    assert said == f"<@{ADMIN}> turned the image cache off."
    off = [await make(pipeline, imagine(settings), member(42)) for _ in range(2)]
    assert [(j.cache_hit, j.cost_fen) for j in off] == [(False, 18), (False, 18)]
    assert fake_api.generation_count == 2
    assert await cache_rows(pipeline) == []  # nothing kept for anyone from a guild without the cache
    elsewhere = [await make(pipeline, imagine(settings), member(42, OTHER_GUILD)) for _ in range(2)]
    assert [(j.cache_hit, j.cost_fen) for j in elsewhere] == [(False, 18), (True, 0)]
    assert fake_api.generation_count == 3


async def test_a_guild_without_the_cache_shares_no_flight_either(pipeline: Pipeline, fake_api: FakeImageApi) -> None:
    await pipeline.admin.set_cache(GUILD, ADMIN, enabled=False, counts=None)
    fake_api.latency_s = 0.3
    tickets = await asyncio.gather(
        *(pipeline.service.submit(imagine(pipeline.settings), member(u), job_id=u) for u in (101, 102))
    )
    jobs = [await asyncio.wait_for(pipeline.service.wait(t.job_id), 10) for t in tickets]
    assert [j.cache_hit for j in jobs] == [False, False]
    assert fake_api.generation_count == 2


async def test_identical_images_downloaded_at_once_are_all_delivered(
    settings_for, delivery, clock, fake_api: FakeImageApi
) -> None:
    """With the cache off, identical requests each generate, and the fake answers each with the same
    bytes: their downloads land on one content address. A job that delivered and releases that file
    must not take it from another job that downloaded it too and has yet to deliver it."""
    fake_api.latency_s = 0.3
    async with running(settings_for(cache_ttl_hours=0), delivery, clock) as pipeline:
        for round in range(5):
            tickets = await asyncio.gather(
                *(pipeline.service.submit(imagine(pipeline.settings), member(u)) for u in (101 + round, 201 + round))
            )
            jobs = [await asyncio.wait_for(pipeline.service.wait(t.job_id), 30) for t in tickets]
            assert [j.state for j in jobs] == ["delivered"] * 2, {j.id: delivery.failures.get(j.id) for j in jobs}
            assert delivery.delivered[jobs[0].id] == delivery.delivered[jobs[1].id]
    assert [p for p in pipeline.settings.cache_dir.rglob("*") if p.is_file()] == []


async def test_a_ttl_of_zero_turns_the_cache_and_shared_flights_off(
    settings_for, delivery, clock, fake_api: FakeImageApi
) -> None:
    settings = settings_for(cache_ttl_hours=0)
    fake_api.latency_s = 0.2
    async with running(settings, delivery, clock) as pipeline:
        await make(pipeline, imagine(settings), member(42))
        together = await asyncio.gather(
            *(pipeline.service.submit(imagine(settings), member(u), job_id=u) for u in (101, 102))
        )
        jobs = [await asyncio.wait_for(pipeline.service.wait(t.job_id), 10) for t in together]
        assert [j.cache_hit for j in jobs] == [False, False]
        assert await cache_rows(pipeline) == []
    assert fake_api.generation_count == 3
    assert [p for p in settings.cache_dir.rglob("*") if p.is_file()] == []  # delivered images are not kept


# -- the ledger -----------------------------------------------------------------------------------------------


async def test_the_ledger_shows_the_hit_at_zero_cost(pipeline: Pipeline, clock: WallClock) -> None:
    settings = pipeline.settings
    first = await make(pipeline, imagine(settings), member(42))
    clock.advance(seconds=1)
    hit = await make(pipeline, imagine(settings), member(43))
    clock.advance(seconds=1)  # the report covers [now - days, now)
    summary = await usage_summary(pipeline.store, guild_id=GUILD)
    assert (summary.total.images, summary.total.cost_fen, summary.total.upstream_fen) == (2, 18, 18)
    assert {r.key: r.cost_fen for r in summary.by_requester} == {"42": 18, "43": 0}
    report = await pipeline.admin.report(GUILD, days=1)
    assert (report.images, report.cost_fen, report.upstream_fen) == (2, 18, 18)
    assert [(u.user_id, u.images, u.cost_fen) for u in report.top_users] == [(42, 1, 18), (43, 1, 0)]
    exported = list(csv.DictReader(io.StringIO((await pipeline.admin.export_csv(GUILD, days=1)).decode())))
    assert [(r["job_id"], r["state"], r["cost_cny"], r["upstream_cny"]) for r in exported] == [
        (str(first.id), "delivered", "0.18", "0.18"),
        (str(hit.id), "delivered", "0.00", "0.00"),
    ]
    stats = await pipeline.service.sharing.cache.stats()
    assert (stats.entries, stats.hits) == (1, 1)


# -- restart --------------------------------------------------------------------------------------------------


async def left_by_a_dead_process(store: Store, job: NewJob) -> None:
    """A queued job as a process that died left it (in a shared queue: held by it, the lease run out)."""
    await JobStore(store).insert(job)
    await store.write("UPDATE jobs SET claimed_by = 'dead', lease_until = 0 WHERE id = ?", (job.id,))


def _queued_copy(job_id: int, request: GenerationRequest, user_id: int) -> NewJob:
    params = request.params
    return NewJob(
        id=job_id,
        requester=str(user_id),
        command="imagine",
        model=request.model,
        prompt=params.prompt,
        size=params.size,
        negative_prompt=params.negative_prompt,
        prompt_extend=params.prompt_extend,
        watermark=params.watermark,
        style=params.style,
        guild_id=GUILD,
        channel_id=CHANNEL,
        user_id=user_id,
    )


async def test_a_follower_left_queued_by_a_restart_is_answered_from_the_cache(
    settings_for, delivery, clock, fake_api: FakeImageApi
) -> None:
    settings = settings_for()
    async with running(settings, delivery, clock) as pipeline:
        leader = await make(pipeline, imagine(settings), member(42), job_id=1)
    # the previous process died with an identical follower still queued (its leader delivered)
    store = await open_store(settings.database_url)
    await left_by_a_dead_process(store, _queued_copy(2, imagine(settings), 43))
    await store.close()
    async with running(settings, delivery, clock) as pipeline:  # resume() picks it up
        job = await asyncio.wait_for(pipeline.service.wait(2), 10)
    assert (job.state, job.cache_hit, job.cost_fen, job.upstream_fen) == ("delivered", True, 0, 0)
    assert job.image_sha256 == leader.image_sha256 and delivery.delivered[2] == delivery.delivered[1]
    assert fake_api.generation_count == 1


@SINGLE_FLIGHT
async def test_identical_jobs_resumed_after_a_restart_still_share_one_upstream_call(
    settings_for, delivery, clock, fake_api: FakeImageApi
) -> None:
    settings = settings_for(upstream_concurrency=2)
    store = await open_store(settings.database_url)
    for job_id, user_id in ((1, 42), (2, 43), (3, 44)):  # a leader and its followers, all still queued
        await left_by_a_dead_process(store, _queued_copy(job_id, imagine(settings), user_id))
    await store.close()
    fake_api.latency_s = 0.3
    async with running(settings, delivery, clock) as pipeline:
        jobs = [await asyncio.wait_for(pipeline.service.wait(i), 10) for i in (1, 2, 3)]
    assert [j.state for j in jobs] == ["delivered"] * 3
    assert fake_api.generation_count == 1
    assert sorted(j.cost_fen for j in jobs) == [0, 0, 18]


def test_variants_really_differ(settings_for) -> None:
    """Guards the miss test: each variant changes exactly one part of the key."""
    settings = settings_for()
    base = imagine(settings).params
    for name, variant in _variants(settings).items():
        names = ("prompt", "size", "negative_prompt", "prompt_extend", "watermark")
        changed = {f for f in names if getattr(variant.params, f) != getattr(base, f)}
        assert len(changed) == 1, (name, changed)
        assert replace(variant.params, **{f: getattr(base, f) for f in changed}) == base


class SlowUploadDelivery(RecordingDelivery):
    """Discord's upload of one job's image hangs until released."""

    def __init__(self, slow_job: int) -> None:
        super().__init__()
        self.slow_job = slow_job
        self.release = asyncio.Event()

    async def deliver(self, job: Job, image: OpenImage) -> None:
        if job.id == self.slow_job:
            await self.release.wait()
        await super().deliver(job, image)


async def test_a_cache_hit_decided_at_dispatch_gives_its_permit_back_before_its_upload(
    settings_for, clock, fake_api: FakeImageApi
) -> None:
    """Issue 8.2: a job that turns out to need no upstream call must not hold the upstream's only
    slot while Discord takes its time with the upload."""
    settings = settings_for(upstream_concurrency=1)
    async with running(settings, RecordingDelivery(), clock) as pipeline:
        await make(pipeline, imagine(settings), member(42), job_id=1)
    store = await open_store(settings.database_url)  # left queued by a restart: a hit when it runs
    await left_by_a_dead_process(store, _queued_copy(2, imagine(settings), 43))
    await store.close()
    delivery = SlowUploadDelivery(slow_job=2)
    async with running(settings, delivery, clock) as pipeline:
        await asyncio.sleep(0.2)  # job 2 is dispatched first and hangs in its upload
        other = await pipeline.service.submit(imagine(settings, "a different picture"), member(44))
        job = await asyncio.wait_for(pipeline.service.wait(other.job_id), 10)  # not stuck behind the upload
        assert job.state == "delivered" and fake_api.generation_count == 2
        delivery.release.set()
        assert (await asyncio.wait_for(pipeline.service.wait(2), 10)).cache_hit
