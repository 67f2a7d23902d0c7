"""The generation service end to end below Discord: real store, real client, the fake image API.

A recording `Delivery` stands in for Discord (the Discord layer has its own end-to-end tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bot.config import Settings
from bot.contracts import DeliveryError, Requester, ShuttingDown
from bot.errors import LimitReached
from bot.imaging.errors import ContentRejected, ServerError
from bot.pipeline import Pipeline
from bot.requests import RequestBuilder
from bot.scheduler import QueuePosition
from bot.service import POSITION_DEBOUNCE_S
from bot.storage.images import OpenImage
from bot.storage.jobs import Job, JobStore, NewJob
from tests.fakes.image_api import FakeImageApi, Reply
from tests.fakes.png import png_size
from tests.images import read_image

pytestmark = pytest.mark.both_backends


class RecordingDelivery:
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.delivered: dict[int, bytes] = {}
        self.failures: dict[int, BaseException] = {}
        self.positions: dict[int, list[QueuePosition]] = {}
        self.fail_next: list[DeliveryError] = []

    async def queued(self, job: Job, position: QueuePosition) -> None:
        self.positions.setdefault(job.id, []).append(position)

    async def started(self, job: Job) -> None:
        self.events.append(("started", job.id))

    async def deliver(self, job: Job, image: OpenImage) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)
        self.events.append(("delivered", job.id))
        self.delivered[job.id] = await asyncio.to_thread(read_image, image)

    async def failed(self, job: Job, error: BaseException) -> None:
        self.events.append(("failed", job.id))
        self.failures[job.id] = error

    async def moderation(self, channel_id: int, text: str) -> None:
        self.events.append(("moderation", channel_id))


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(upstream_rpm=6000, upstream_concurrency=2)


@pytest.fixture
async def delivery() -> RecordingDelivery:
    return RecordingDelivery()


@pytest.fixture
async def pipeline(settings: Settings, delivery: RecordingDelivery):
    pipeline = await Pipeline.open(settings, delivery)
    pipeline.service.runner._sleep = _no_sleep  # delivery retry backoff
    await pipeline.service.start()
    yield pipeline
    await pipeline.close(grace_s=1)


async def _no_sleep(_: float) -> None:
    return None


def request(settings: Settings, prompt: str = "A cute orange kitten"):
    return RequestBuilder(settings).imagine(prompt)


USER = Requester("42", guild_id=1, channel_id=2, user_id=42)


async def test_a_job_is_generated_delivered_and_charged(settings, pipeline: Pipeline, delivery, fake_api) -> None:
    ticket = await pipeline.service.submit(request(settings), USER, job_id=1001)
    job = await asyncio.wait_for(pipeline.service.wait(ticket.job_id), 10)
    assert (job.state, job.cost_fen, job.upstream_fen) == ("delivered", 18, 18)
    assert job.request_id == fake_api.requests[0].request_id
    assert png_size(delivery.delivered[1001]) == (1328, 1328)
    assert delivery.events == [("started", 1001), ("delivered", 1001)]
    files = [p for p in settings.cache_dir.rglob("*") if p.is_file()]
    assert [f.name for f in files] == [job.image_sha256]  # kept once, for the result cache


async def test_a_replayed_interaction_creates_no_second_job(settings, pipeline: Pipeline, fake_api) -> None:
    first = await pipeline.service.submit(request(settings), USER, job_id=7)
    again = await pipeline.service.submit(request(settings, "something else"), USER, job_id=7)
    assert again.replayed and not first.replayed
    await asyncio.wait_for(pipeline.service.wait(7), 10)
    assert fake_api.generation_count == 1


async def test_failures_are_recorded_with_the_request_id_and_not_charged(
    settings, pipeline: Pipeline, delivery, fake_api
) -> None:
    fake_api.script(Reply.content_rejected())
    ticket = await pipeline.service.submit(request(settings), USER)
    job = await asyncio.wait_for(pipeline.service.wait(ticket.job_id), 10)
    assert (job.state, job.cost_fen, job.error_code) == ("failed", 0, "ContentRejected")
    assert job.request_id == fake_api.requests[0].request_id
    assert isinstance(delivery.failures[job.id], ContentRejected)


async def test_a_failed_download_is_not_charged_but_the_upstream_spend_is_recorded(
    settings, pipeline: Pipeline, fake_api
) -> None:
    fake_api.script(Reply.ok(image="missing"))
    ticket = await pipeline.service.submit(request(settings), USER)
    job = await asyncio.wait_for(pipeline.service.wait(ticket.job_id), 10)
    assert (job.state, job.cost_fen, job.upstream_fen, job.error_code) == (
        "failed",
        0,
        18,
        "ImageUnavailable",
    )


async def test_discord_side_delivery_failures_retry_from_the_stored_image(
    settings, pipeline: Pipeline, delivery, fake_api
) -> None:
    delivery.fail_next = [DeliveryError("502", retryable=True), DeliveryError("429", retryable=True)]
    ticket = await pipeline.service.submit(request(settings), USER)
    job = await asyncio.wait_for(pipeline.service.wait(ticket.job_id), 10)
    assert job.state == "delivered"
    assert fake_api.generation_count == 1
    assert len(fake_api.downloads) == 1  # retried from the stored bytes, not fetched again


async def test_a_delivery_that_cannot_succeed_fails_uncharged(settings, pipeline: Pipeline, delivery) -> None:
    delivery.fail_next = [DeliveryError("403 Missing Access", retryable=False)]
    ticket = await pipeline.service.submit(request(settings), USER)
    job = await asyncio.wait_for(pipeline.service.wait(ticket.job_id), 10)
    assert (job.state, job.cost_fen) == ("failed", 0)


async def test_429_puts_the_job_back_and_it_is_charged_once(settings, pipeline: Pipeline, fake_api) -> None:
    fake_api.script(*[Reply.error(429, retry_after=0)] * 3)  # the client's own 2 retries, then requeue
    ticket = await pipeline.service.submit(request(settings), USER)
    job = await asyncio.wait_for(pipeline.service.wait(ticket.job_id), 10)
    assert (job.state, job.cost_fen, job.attempts) == ("delivered", 18, 1)
    assert fake_api.generation_count == 1


async def test_queue_admission_refuses_before_anything_is_written(
    make_settings, delivery, fake_api: FakeImageApi
) -> None:
    settings = make_settings(user_pending_max=1)
    fake_api.latency_s = 0.5
    pipeline = await Pipeline.open(settings, delivery)
    await pipeline.service.start()
    try:
        await pipeline.service.submit(request(settings), USER, job_id=1)
        with pytest.raises(LimitReached, match="already have 1 image"):
            await pipeline.service.submit(request(settings, "another picture"), USER, job_id=2)
        assert await pipeline.jobs.get(2) is None
    finally:
        await pipeline.close(grace_s=2)


async def test_positions_are_published_as_the_queue_moves(make_settings, delivery, fake_api) -> None:
    settings = make_settings(upstream_concurrency=1, upstream_rpm=6000, user_pending_max=5)
    # each place lasts a generation: longer than the debounce, or a busy machine may skip the last one
    fake_api.latency_s = POSITION_DEBOUNCE_S * 3
    pipeline = await Pipeline.open(settings, delivery)
    await pipeline.service.start()
    try:
        tickets = [await pipeline.service.submit(request(settings, f"p{i}"), USER, job_id=100 + i) for i in range(3)]
        assert tickets[2].position is not None and tickets[2].position.guild_position >= 2
        for ticket in tickets:
            await asyncio.wait_for(pipeline.service.wait(ticket.job_id), 10)
        seen = [p.guild_position for p in delivery.positions.get(102, [])]
        assert seen and seen == sorted(seen, reverse=True) and seen[-1] == 1  # moved up to the head
    finally:
        await pipeline.close(grace_s=1)


async def test_stopping_refuses_new_work(settings, pipeline: Pipeline) -> None:
    await pipeline.service.stop(grace_s=0)
    with pytest.raises(ShuttingDown):
        await pipeline.service.submit(request(settings), USER)


# -- restart recovery ---------------------------------------------------------------------------


async def seed(settings: Settings, *jobs: tuple[int, str, dict]) -> None:
    """Write job rows as a previous process would have left them."""
    from bot.storage.connect import open_store

    store = await open_store(settings.database_url)
    repo = JobStore(store)
    for job_id, state, fields in jobs:
        await repo.insert(
            NewJob(
                id=job_id,
                requester="42",
                command="imagine",
                model="qwen-image-plus",
                prompt=f"prompt {job_id}",
                size="1328*1328",
                negative_prompt="",
                prompt_extend=True,
                watermark=True,
                guild_id=1,
            )
        )
        await asyncio.sleep(0.002)
        if state in ("submitting", "generated"):
            await repo.mark_submitting(job_id)
        if fields.get("attempts") == 2:
            await store.write("UPDATE jobs SET attempts = 2 WHERE id = ?", (job_id,))
        if state == "generated":
            await repo.mark_generated(
                job_id, request_id="req-old", image_url=fields["url"], revised_prompt="", upstream_fen=18
            )
        # in a shared queue (PostgreSQL) the dead process held them, and its leases have run out
        await store.write("UPDATE jobs SET claimed_by = 'dead', lease_until = 0 WHERE id = ?", (job_id,))
    await store.close()


async def test_restart_resumes_every_unfinished_job_exactly_once(settings: Settings, delivery, fake_api) -> None:
    url = fake_api.url + "/files/missing-ok.png"
    # a URL the fake will serve: ask it for one image first, outside any job
    import httpx

    async with httpx.AsyncClient() as http:
        answer = await http.post(
            fake_api.base_url + "/images/generations",
            json={"model": "qwen-image-plus", "prompt": "x", "parameters": {"size": "1328*1328"}},
            headers={"Authorization": f"Bearer {settings.nebula_api_key.get_secret_value()}"},
        )
        url = answer.json()["data"]["data"][0]["url"]
    fake_api.reset()
    await seed(
        settings,
        (1, "queued", {}),
        (2, "submitting", {}),
        (3, "generated", {"url": url}),
        (4, "submitting", {"attempts": 2}),
        (5, "queued", {}),
    )
    pipeline = await Pipeline.open(settings, delivery)
    try:
        await pipeline.service.start()
        finals = {i: await asyncio.wait_for(pipeline.service.wait(i), 10) for i in range(1, 6)}
    finally:
        await pipeline.close(grace_s=1)
    assert {i: j.state for i, j in finals.items()} == {
        1: "delivered",
        2: "delivered",
        3: "delivered",
        4: "failed",
        5: "delivered",
    }
    assert finals[2].attempts == 2  # resubmitted once
    assert finals[3].request_id == "req-old"  # delivered from its URL, never regenerated
    assert fake_api.generation_count == 3  # jobs 1, 2 and 5
    prompts = [r.json["prompt"] for r in fake_api.requests]
    assert sorted(prompts) == ["prompt 1", "prompt 2", "prompt 5"]
    assert sorted(delivery.delivered) == [1, 2, 3, 5]
    assert finals[4].error_code == "JobInterrupted"


async def test_server_error_fails_cleanly_after_retries(settings, pipeline: Pipeline, delivery, fake_api) -> None:
    pipeline.service.runner._client._sleep = _no_sleep
    fake_api.script(*[Reply.error(500)] * 3)
    ticket = await pipeline.service.submit(request(settings), USER)
    job = await asyncio.wait_for(pipeline.service.wait(ticket.job_id), 10)
    assert (job.state, job.cost_fen) == ("failed", 0)
    assert isinstance(delivery.failures[job.id], ServerError)
    assert len(fake_api.requests) == 3
