"""The fair queue in the store (bot/storage/shared_queue.py): the same order as the in-memory
FairQueue, claims that never hand one job to two processes, and leases that return a dead
process's jobs. On SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable

import pytest

from bot.fair_queue import FairQueue, QueueItem
from bot.storage.connect import open_store
from bot.storage.db import Store
from bot.storage.jobs import JobStore, NewJob
from bot.storage.shared_queue import SharedQueue

pytestmark = pytest.mark.both_backends


class Wall:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = await open_store(database_url)
    yield store
    await store.close()


@pytest.fixture
def wall() -> Wall:
    return Wall()


@pytest.fixture
def queue_of(store: Store, wall: Wall) -> Callable[[str], SharedQueue]:
    return lambda owner: SharedQueue(store, owner, lease_s=30.0, now=wall)


_ids = iter(range(1, 10**9))


async def new_job(store: Store, guild: str, user: str) -> int:
    job_id = next(_ids)
    await JobStore(store).insert(
        NewJob(
            id=job_id,
            requester=user,
            command="imagine",
            model="qwen-image-plus",
            prompt=f"job {job_id}",
            size="1328*1328",
            negative_prompt="",
            prompt_extend=True,
            watermark=True,
            guild_id=int(guild.removeprefix("guild:")) if guild != "cli" else None,
        )
    )
    return job_id


async def test_the_claim_order_is_the_fair_queues_order(store: Store, queue_of) -> None:
    """Random pushes (some to the front), pops interleaved: the store gives the very same order."""
    shared, memory = queue_of("p1"), FairQueue()
    rng = random.Random(8)
    guilds = [f"guild:{g}" for g in range(1, 5)] + ["cli"]
    taken_shared: list[int] = []
    taken_memory: list[int] = []
    for step in range(120):
        if rng.random() < 0.6:
            guild, user = rng.choice(guilds), f"u{rng.randrange(6)}"
            job_id = await new_job(store, guild, user)
            front = rng.random() < 0.1
            await shared.push(job_id, guild, user, front=front)
            memory.push(QueueItem(job_id, guild, user, step), front=front)
        else:
            item = await shared.claim()
            expected = memory.pop()
            taken_shared.append(item.job_id if item else -1)
            taken_memory.append(expected.job_id if expected else -1)
    assert [i.job_id for i in await shared.waiting()] == [i.job_id for i in memory.order()]
    while (item := await shared.claim()) is not None:
        taken_shared.append(item.job_id)
    while (expected := memory.pop()) is not None:
        taken_memory.append(expected.job_id)
    assert taken_shared == taken_memory


async def test_a_light_guilds_job_starts_within_one_turn_of_a_flood(store: Store, queue_of) -> None:
    queue = queue_of("p1")
    for _ in range(30):
        await queue.push(await new_job(store, "guild:1", "flood"), "guild:1", "flood")
    assert (await queue.claim()).guild_key == "guild:1"
    light = await new_job(store, "guild:2", "light")
    await queue.push(light, "guild:2", "light")
    assert [(await queue.claim()).job_id for _ in range(2)][1] == light  # at most one flood job first


async def test_concurrent_claimers_in_two_processes_take_each_job_exactly_once(
    database_url: str, store: Store, wall: Wall
) -> None:
    other = await open_store(database_url)  # a second process: its own connections
    try:
        first, second = SharedQueue(store, "p1", now=wall), SharedQueue(other, "p2", now=wall)
        jobs = []
        for n in range(60):
            guild, user = f"guild:{n % 7 + 1}", f"u{n % 5}"
            jobs.append(await new_job(store, guild, user))
            await first.push(jobs[-1], guild, user)

        async def drain(queue: SharedQueue) -> list[int]:
            taken = []
            while (item := await queue.claim()) is not None:
                taken.append(item.job_id)
                await asyncio.sleep(0)
            return taken

        a, b, c = await asyncio.gather(drain(first), drain(second), drain(second))
        assert sorted(a + b + c) == sorted(jobs)  # none lost, none twice
        rows = await store.fetch_all("SELECT id, claimed_by FROM jobs")
        owners = {int(r["id"]): r["claimed_by"] for r in rows}
        assert {owners[j] for j in a} <= {"p1"} and {owners[j] for j in b + c} <= {"p2"}
    finally:
        await other.close()


async def test_a_dead_processs_jobs_come_back_at_the_head_when_its_lease_runs_out(
    store: Store, queue_of, wall: Wall
) -> None:
    dead, alive = queue_of("dead"), queue_of("alive")
    held = await new_job(store, "guild:1", "a")
    waiting = await new_job(store, "guild:1", "b")
    for job_id, user in ((held, "a"), (waiting, "b")):
        await dead.push(job_id, "guild:1", user)
    assert (await dead.claim()).job_id == held
    wall.now += 10
    assert await alive.reclaim_expired() == []  # the lease still runs
    wall.now += 30
    [back] = await alive.reclaim_expired()
    assert (back.job_id, back.state) == (held, "queued")
    assert [i.job_id for i in await alive.waiting()] == [held, waiting]  # at the head
    assert (await alive.claim()).job_id == held


async def test_a_renewed_lease_keeps_the_job(store: Store, queue_of, wall: Wall) -> None:
    worker, other = queue_of("worker"), queue_of("other")
    job_id = await new_job(store, "guild:1", "a")
    await worker.push(job_id, "guild:1", "a")
    await worker.claim()
    for _ in range(5):
        wall.now += 20
        assert await worker.renew() == 1
        assert await other.reclaim_expired() == []


async def test_a_job_caught_mid_request_is_requeued_once_then_left_to_be_failed(
    store: Store, queue_of, wall: Wall
) -> None:
    dead, alive = queue_of("dead"), queue_of("alive")
    job_id = await new_job(store, "guild:1", "a")
    await dead.push(job_id, "guild:1", "a")
    await dead.claim()
    jobs = JobStore(store)
    await jobs.mark_submitting(job_id)  # the request left, then the process died
    wall.now += 60
    [first] = await alive.reclaim_expired()
    assert (first.state, first.attempts) == ("submitting", 1)
    assert (await jobs.get(job_id)).state == "queued"  # resubmitted once
    assert (await alive.claim()).job_id == job_id
    await jobs.mark_submitting(job_id)  # the second attempt, and this process dies too
    wall.now += 60
    [second] = await dead.reclaim_expired()
    assert (second.state, second.attempts) == ("submitting", 2)  # not a third time: to be failed
    row = await store.fetch_one("SELECT state, claimed_by FROM jobs WHERE id = ?", (job_id,))
    assert (row["state"], row["claimed_by"]) == ("submitting", "dead")
    assert await dead.claim() is None


async def test_a_removed_job_is_never_claimed(store: Store, queue_of) -> None:
    queue = queue_of("p1")
    gone, kept = await new_job(store, "guild:1", "a"), await new_job(store, "guild:1", "a")
    for job_id in (gone, kept):
        await queue.push(job_id, "guild:1", "a")
    await queue.remove(gone)
    assert (await queue.claim()).job_id == kept
    assert await queue.claim() is None


async def test_a_job_admitted_by_a_process_that_died_before_queueing_it_is_queued(store: Store, queue_of) -> None:
    queue = queue_of("alive")
    stray = await new_job(store, "guild:1", "a")  # the row is written; the process died before the push
    assert await queue.reclaim_expired() == []  # it may be in the middle of its acknowledgement
    await store.write("UPDATE jobs SET queued_at = '2026-01-01T00:00:00.000+00:00' WHERE id = ?", (stray,))
    [found] = await queue.reclaim_expired()
    assert (found.job_id, found.state) == (stray, "queued")
    assert (await queue.claim()).job_id == stray
