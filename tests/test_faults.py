"""Issue 8.4 and 8.5: pay once, never a wrong message, never a silent stop. The generation
service below Discord (a recording Delivery), a real store, the real client, the fake image API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bot.config import Settings
from bot.contracts import Requester
from bot.errors import LimitReached
from bot.pipeline import Pipeline
from bot.requests import RequestBuilder
from bot.storage.images import OpenImage
from bot.storage.jobs import Job
from tests.fakes.image_api import FakeImageApi
from tests.test_service import RecordingDelivery

pytestmark = pytest.mark.both_backends

USER = Requester("42", guild_id=1, channel_id=2, user_id=42)
OTHER = Requester("43", guild_id=1, channel_id=2, user_id=43)


async def started(settings: Settings, delivery: RecordingDelivery) -> Pipeline:
    pipeline = await Pipeline.open(settings, delivery)
    await pipeline.service.start()
    return pipeline


def imagine(settings: Settings, prompt: str = "A cute orange kitten"):
    return RequestBuilder(settings).imagine(prompt)


async def no_sleep(_: float) -> None:
    return None


async def finished(pipeline: Pipeline, job_id: int) -> Job:
    return await asyncio.wait_for(pipeline.service.wait(job_id), 10)


# -- 5. a delivered job stays delivered --------------------------------------------------------------


async def test_an_error_after_a_successful_delivery_never_reaches_the_user(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(cache_ttl_hours=0)  # no cache: the image file is released after delivery
    delivery = RecordingDelivery()
    pipeline = await started(settings, delivery)
    try:

        async def broken_delete(sha256: str) -> None:
            raise OSError("disk went read-only")

        pipeline.service.runner._images.delete = broken_delete  # type: ignore[method-assign]
        ticket = await pipeline.service.submit(imagine(settings), USER)
        await pipeline.service.background.settle(10)
        job = await finished(pipeline, ticket.job_id)
    finally:
        await pipeline.close(grace_s=1)
    assert (job.state, job.cost_fen) == ("delivered", 18)
    assert delivery.events == [("started", job.id), ("delivered", job.id)]  # no "something went wrong"
    assert delivery.failures == {}
    assert f"job {job.id}" in caplog.text and "disk went read-only" in caplog.text


class ExplodingDelivery(RecordingDelivery):
    """Discord's side raises something unexpected (not a DeliveryError) for some jobs."""

    def __init__(self) -> None:
        super().__init__()
        self.explode_for: set[int] = set()

    async def deliver(self, job: Job, image: OpenImage) -> None:
        if job.id in self.explode_for:
            raise RuntimeError("unexpected bug in the delivery")
        await super().deliver(job, image)


async def test_an_unexpected_error_in_a_background_delivery_finishes_the_job(
    make_settings: Callable[..., Settings], fake_api: FakeImageApi, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()
    delivery = ExplodingDelivery()
    pipeline = await started(settings, delivery)
    pipeline.service.runner._sleep = no_sleep  # type: ignore[method-assign]  # between delivery retries
    try:
        first = await pipeline.service.submit(imagine(settings), USER)
        await finished(pipeline, first.job_id)
        delivery.explode_for.add(99)
        hit = await pipeline.service.submit(imagine(settings), OTHER, job_id=99)  # a cache hit, delivered in background
        assert hit.cached
        job = await finished(pipeline, 99)  # not left `generated` forever
    finally:
        await pipeline.close(grace_s=1)
    assert (job.state, job.cost_fen) == ("failed", 0)
    assert isinstance(delivery.failures[99], Exception)
    assert "job 99" in caplog.text and "unexpected bug in the delivery" in caplog.text
    assert fake_api.generation_count == 1


# -- 4. pay once: a graceful stop lets requests already sent finish -------------------------------


async def test_a_graceful_stop_lets_a_request_already_sent_finish_past_the_grace(
    make_settings: Callable[..., Settings], fake_api: FakeImageApi
) -> None:
    """SHUTDOWN_GRACE_S is shorter than a slow generation: cancelling it would have it generated
    (and billed) again after the restart."""
    fake_api.latency_s = 1.5
    settings = make_settings()
    delivery = RecordingDelivery()
    pipeline = await started(settings, delivery)
    ticket = await pipeline.service.submit(imagine(settings), USER)
    for _ in range(200):
        if fake_api.requests:
            break
        await asyncio.sleep(0.01)
    await pipeline.close(grace_s=0.2)
    assert fake_api.generation_count == 1
    assert delivery.events[-1] == ("delivered", ticket.job_id)
    pipeline = await Pipeline.open(settings, RecordingDelivery())
    try:
        job = await pipeline.jobs.get(ticket.job_id)
    finally:
        await pipeline.close()
    assert job is not None and (job.state, job.attempts, job.cost_fen) == ("delivered", 1, 18)


async def test_a_job_stopped_before_its_request_left_goes_back_to_the_queue_uncounted(
    make_settings: Callable[..., Settings], fake_api: FakeImageApi
) -> None:
    settings = make_settings()
    pipeline = await started(settings, RecordingDelivery())
    real_generate = pipeline.service.runner._client.generate
    preparing = asyncio.Event()

    async def slow_to_send(*args, **kwargs):
        preparing.set()
        await asyncio.sleep(30)  # still preparing its request when the stop comes
        return await real_generate(*args, **kwargs)

    pipeline.service.runner._client.generate = slow_to_send  # type: ignore[method-assign]
    ticket = await pipeline.service.submit(imagine(settings), USER)
    await asyncio.wait_for(preparing.wait(), 10)
    await asyncio.wait_for(pipeline.close(grace_s=5), 2)  # nothing was sent: no reason to wait
    assert fake_api.requests == []
    pipeline = await Pipeline.open(settings, RecordingDelivery())
    try:
        job = await pipeline.jobs.get(ticket.job_id)
    finally:
        await pipeline.close()
    # queued again, and its one allowed resubmission after a crash is still unused
    assert job is not None and (job.state, job.attempts) == ("queued", 0)


async def test_forcing_a_stop_cancels_a_request_in_flight(
    make_settings: Callable[..., Settings], fake_api: FakeImageApi
) -> None:
    fake_api.latency_s = 30
    settings = make_settings()
    pipeline = await started(settings, RecordingDelivery())
    await pipeline.service.submit(imagine(settings), USER)
    for _ in range(200):
        if fake_api.requests:
            break
        await asyncio.sleep(0.01)
    closing = asyncio.create_task(pipeline.close(grace_s=0.2))
    await asyncio.sleep(0.5)
    assert not closing.done()  # waiting for the request in flight
    pipeline.service.force_stop()  # the second signal
    await asyncio.wait_for(closing, 5)


# -- 5. a stalled dispatch loop is impossible to miss ------------------------------------------------


async def test_while_the_dispatch_loop_keeps_failing_new_requests_are_refused_clearly(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    pipeline = await started(settings, RecordingDelivery())
    try:

        async def broken_acquire():
            raise RuntimeError("the limiter is broken")

        scheduler = pipeline.service.scheduler
        scheduler._limiter.acquire = broken_acquire  # type: ignore[method-assign]
        scheduler._restart_delay_s = scheduler._max_restart_delay_s = 0.01
        await pipeline.service.submit(imagine(settings, "the first one"), USER)  # wakes the loop: it fails
        for _ in range(500):
            if not scheduler.healthy:
                break
            await asyncio.sleep(0.01)
        assert not scheduler.healthy
        with pytest.raises(LimitReached) as refused:
            await pipeline.service.submit(imagine(settings, "the second one"), OTHER)
        assert refused.value.limit == "stalled" and "operators have been alerted" in refused.value.message
    finally:
        pipeline.service.force_stop()
        await pipeline.close(grace_s=0.1)
