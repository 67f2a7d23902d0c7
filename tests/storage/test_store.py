"""The SQLite store: a real file in a temp dir, migrations, serialized writes, job states."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.storage.db import SqliteStore, Store
from bot.storage.images import ImageStore, StoredImage
from bot.storage.jobs import JobStore, NewJob, new_local_id
from bot.storage.migrations import LATEST_VERSION, MIGRATIONS
from bot.storage.reports import fen_to_cny, usage_summary


def new_job(job_id: int, **kw) -> NewJob:
    values = {
        "id": job_id,
        "requester": "cli",
        "command": "cli",
        "model": "qwen-image-plus",
        "prompt": "A cute orange kitten",
        "size": "1328*1328",
        "negative_prompt": "",
        "prompt_extend": True,
        "watermark": True,
    }
    values.update(kw)
    return NewJob(**values)


@pytest.fixture
async def store(tmp_path: Path):
    store = await SqliteStore.open(tmp_path / "nested" / "imagine.db")
    yield store
    await store.close()


async def test_open_creates_the_folder_and_applies_every_migration(store: Store) -> None:
    assert store.path.parent.is_dir()
    assert await store.schema_version() == LATEST_VERSION
    tables = {r["name"] for r in await store.fetch_all("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"jobs", "meta", "guild_settings", "quota_counters"} <= tables


async def test_pragmas_are_set(store: Store) -> None:
    assert (await store.fetch_one("PRAGMA journal_mode"))[0] == "wal"
    assert (await store.fetch_one("PRAGMA foreign_keys"))[0] == 1
    assert (await store.fetch_one("PRAGMA synchronous"))[0] == 2  # FULL
    assert (await store.fetch_one("PRAGMA busy_timeout"))[0] == 5000


async def test_an_old_database_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = await SqliteStore.open(path, migrations=MIGRATIONS[:1])
    assert await old.schema_version() == 1
    await old.write(  # a row as version 1 wrote it
        "INSERT INTO jobs (id, requester, command, model, prompt, size, prompt_extend, watermark, queued_at)"
        " VALUES (1, 'cli', 'cli', 'qwen-image-plus', 'A cute orange kitten', '1328*1328', 1, 1, ?)",
        (old.now(),),
    )
    await old.close()

    store = await SqliteStore.open(path)
    try:
        assert await store.schema_version() == LATEST_VERSION
        job = await JobStore(store).get(1)
        assert (job.prompt, job.state, job.interaction_token, job.reroll_of) == (
            "A cute orange kitten",
            "queued",
            None,
            None,
        )
        await store.set_meta("k", "v")
        assert await store.get_meta("k") == "v"
    finally:
        await store.close()


async def test_reopening_an_up_to_date_database_changes_nothing(tmp_path: Path) -> None:
    for _ in range(2):
        store = await SqliteStore.open(tmp_path / "x.db")
        assert await store.schema_version() == LATEST_VERSION
        await store.close()


async def test_a_failing_migration_leaves_the_old_version(tmp_path: Path) -> None:
    from bot.storage.migrations import Migration

    broken = (*MIGRATIONS, Migration(LATEST_VERSION + 1, "broken", ("CREATE TABLE t (x)", "NOT SQL")))
    with pytest.raises(sqlite3.OperationalError):
        await SqliteStore.open(tmp_path / "x.db", migrations=broken)
    store = await SqliteStore.open(tmp_path / "x.db")
    try:
        assert await store.schema_version() == LATEST_VERSION
        assert await store.fetch_one("SELECT name FROM sqlite_master WHERE name = 't'") is None
    finally:
        await store.close()


async def test_a_rollback_never_takes_another_coroutines_write_with_it(store: Store) -> None:
    jobs = JobStore(store)

    async def doomed() -> None:
        async with store.transaction() as db:
            await db.execute("INSERT INTO meta(key, value) VALUES ('doomed', 'x')")
            await asyncio.sleep(0.01)  # others try to write meanwhile
            raise RuntimeError("roll back")

    async def insert(i: int) -> bool:
        return await jobs.insert(new_job(i))

    results = await asyncio.gather(doomed(), *(insert(i) for i in range(1, 201)), return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert all(r is True for r in results[1:])
    assert (await store.fetch_one("SELECT COUNT(*) FROM jobs"))[0] == 200
    assert await store.get_meta("doomed") is None


async def test_reads_see_only_committed_rows(store: Store) -> None:
    async with store.transaction() as db:
        await db.execute("INSERT INTO meta(key, value) VALUES ('pending', 'x')")
        assert await store.get_meta("pending") is None  # the reader connection does not see it yet
    assert await store.get_meta("pending") == "x"


async def test_replayed_insert_writes_nothing(store: Store) -> None:
    jobs = JobStore(store)
    assert await jobs.insert(new_job(7)) is True
    assert await jobs.insert(new_job(7, prompt="something else")) is False
    assert (await jobs.get(7)).prompt == "A cute orange kitten"


async def test_job_goes_through_its_states_and_is_charged_on_delivery(store: Store) -> None:
    jobs = JobStore(store)
    await jobs.insert(new_job(1, inputs={"title": "Summer Sale"}))
    job = await jobs.get(1)
    assert (job.state, job.attempts, job.cost_fen, job.inputs) == ("queued", 0, 0, {"title": "Summer Sale"})
    assert await jobs.mark_submitting(1)
    assert await jobs.mark_generated(
        1, request_id="req-1", image_url="https://x/y.png", revised_prompt="", upstream_fen=18
    )
    assert not await jobs.mark_submitting(1)  # never backwards
    assert await jobs.set_image(1, "ab" * 32)
    assert await jobs.mark_delivered(1, cost_fen=18)
    job = await jobs.get(1)
    assert (job.state, job.attempts, job.request_id, job.cost_fen, job.upstream_fen) == (
        "delivered",
        1,
        "req-1",
        18,
        18,
    )
    assert job.finished and job.finished_at and job.started_at and job.generated_at
    assert not await jobs.mark_failed(1, error_code="X", error_message="late")  # delivered stays delivered


async def test_failure_is_never_charged_and_keeps_the_request_id(store: Store) -> None:
    jobs = JobStore(store)
    await jobs.insert(new_job(1))
    await jobs.mark_submitting(1)
    assert await jobs.mark_failed(1, error_code="ServerError", error_message="boom", request_id="req-9")
    job = await jobs.get(1)
    assert (job.state, job.cost_fen, job.error_code, job.request_id) == ("failed", 0, "ServerError", "req-9")


async def test_requeue_after_429_does_not_count_the_attempt(store: Store) -> None:
    jobs = JobStore(store)
    await jobs.insert(new_job(1))
    await jobs.mark_submitting(1)
    assert await jobs.mark_queued_again(1)
    job = await jobs.get(1)
    assert (job.state, job.attempts) == ("queued", 0)


async def test_unfinished_jobs_come_back_in_queue_order(store: Store) -> None:
    jobs = JobStore(store)
    for i in (3, 1, 2, 4):
        await jobs.insert(new_job(i))
        await asyncio.sleep(0.002)  # distinct queued_at
    await jobs.mark_submitting(4)
    await jobs.mark_failed(4, error_code="X", error_message="x")
    assert [job.id for job in await jobs.unfinished()] == [3, 1, 2]


async def test_money_is_integer_fen_in_reports(store: Store) -> None:
    jobs = JobStore(store)
    for i in range(1, 4):
        await jobs.insert(new_job(i, requester="42" if i < 3 else "cli"))
        await jobs.mark_submitting(i)
        await jobs.mark_generated(i, request_id=None, image_url="u", revised_prompt="", upstream_fen=18)
    await jobs.mark_delivered(1, cost_fen=18)
    await jobs.mark_delivered(2, cost_fen=18)
    await jobs.mark_failed(3, error_code="ImageUnavailable", error_message="404")
    summary = await usage_summary(store)
    assert (
        summary.total.images,
        summary.total.failures,
        summary.total.cost_fen,
        summary.total.upstream_fen,
    ) == (
        2,
        1,
        36,
        54,
    )
    assert {row.key: row.images for row in summary.by_requester} == {"42": 2, "cli": 0}
    assert fen_to_cny(36) == "0.36"
    assert (await usage_summary(store, since="2999-01-01")).total.images == 0


def test_local_ids_are_unique_and_snowflake_shaped() -> None:
    ids = {new_local_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(1 << 50 < i < 1 << 63 for i in ids)


async def test_image_store_round_trip_and_corruption(tmp_path: Path) -> None:
    images = ImageStore(tmp_path / "cache")
    sha = await images.put(b"\x89PNG\r\n\x1a\nabc")
    stored = await images.open_image(sha)
    assert stored is not None and (stored.kind, stored.size) == ("png", 11)
    assert stored.file.read() == stored.path.read_bytes() == b"\x89PNG\r\n\x1a\nabc"
    await stored.close()
    assert await images.check(sha) == StoredImage(sha, images.path_for(sha), 11, "png")
    images.path_for(sha).write_bytes(b"torn")
    assert await images.open_image(sha) is None  # corrupt reads as missing
    assert not images.path_for(sha).exists()  # and is deleted
    assert await images.open_image("0" * 64) is None
    sha = await images.put(b"not an image")
    assert await images.open_image(sha) is None  # intact, but nothing to deliver
    await images.delete(sha)
    assert not images.path_for(sha).exists()
    assert list(images.spool_dir.iterdir()) == []


# -- cancellation: a write transaction is all-or-nothing and never leaves the connection inside one -------
# aiosqlite runs each call in the connection's own thread, in order: a statement whose await was
# cancelled still runs. A cancelled writer must therefore close its transaction before giving up.


async def test_a_write_cancelled_while_beginning_leaves_no_open_transaction(store: Store) -> None:
    task = asyncio.create_task(store.set_meta("cancelled", "x"))
    await asyncio.sleep(0)  # the task has handed BEGIN IMMEDIATE to the thread and awaits it
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.set_meta("after", "ok")  # used to fail: cannot start a transaction within a transaction
    assert await store.get_meta("after") == "ok"
    assert await store.get_meta("cancelled") is None


async def test_a_transaction_cancelled_at_any_await_point_is_all_or_nothing(store: Store) -> None:
    async def two_rows() -> None:
        async with store.transaction() as db:
            await db.execute("INSERT INTO meta(key, value) VALUES ('a', '1')")
            await asyncio.sleep(0)
            await db.execute("INSERT INTO meta(key, value) VALUES ('b', '2')")
            await asyncio.sleep(0)

    outcomes = []
    for n in range(5000):  # about 100 are needed here; the thread's fsync decides
        await store.write("DELETE FROM meta WHERE key IN ('a', 'b')")  # the next write always succeeds
        task = asyncio.create_task(two_rows())
        for _ in range(n):
            await asyncio.sleep(0)
        completed = task.done()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            assert not completed
        rows = {r["key"] for r in await store.fetch_all("SELECT key FROM meta WHERE key IN ('a', 'b')")}
        assert rows in (set(), {"a", "b"}), f"half-written after {n} loop iterations: {rows}"
        outcomes.append((completed, bool(rows)))
        if completed:
            break
    else:
        pytest.fail("the transaction never completed")
    assert outcomes[-1] == (True, True)
    assert (False, False) in outcomes  # some cancellations did roll back
    await store.set_meta("after", "ok")
    assert await store.get_meta("after") == "ok"


@pytest.fixture
def gate():
    """Set it to release the `gate()` SQL function (see `gate_function`); always set at teardown."""
    gate = threading.Event()
    yield gate
    gate.set()


def gate_function(gate: threading.Event) -> Callable[[], bool]:
    """An SQL function that holds the connection's thread until `gate` is set (at most 10 s)."""
    return lambda: gate.wait(10)


async def test_a_write_cancelled_during_commit_is_committed_before_the_cancel_is_seen(
    store: Store, gate: threading.Event
) -> None:
    # Decision: a COMMIT handed to the thread runs anyway, so the transaction IS committed; the
    # cancelled caller sees CancelledError only once that COMMIT has run.
    body_done = asyncio.Event()
    held: list[asyncio.Future] = []

    async def two_rows() -> None:
        async with store.transaction() as db:
            await db.create_function("gate", 0, gate_function(gate))
            await db.execute("INSERT INTO meta(key, value) VALUES ('a', '1')")
            await db.execute("INSERT INTO meta(key, value) VALUES ('b', '2')")
            held.append(asyncio.ensure_future(db.execute("SELECT gate()")))
            await asyncio.sleep(0)  # the gate is queued: the COMMIT will wait behind it
            body_done.set()

    task = asyncio.create_task(two_rows())
    await body_done.wait()
    for _ in range(5):
        await asyncio.sleep(0)  # the task now awaits its COMMIT
    task.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done(), "the cancel propagated before the COMMIT ran (the write lock is already free)"
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await held[0]
    assert (await store.get_meta("a"), await store.get_meta("b")) == ("1", "2")
    await store.set_meta("after", "ok")
    assert await store.get_meta("after") == "ok"


async def test_a_write_cancelled_during_its_rollback_is_rolled_back(store: Store, gate: threading.Event) -> None:
    body_done = asyncio.Event()
    held: list[asyncio.Future] = []

    async def doomed() -> None:
        async with store.transaction() as db:
            await db.create_function("gate", 0, gate_function(gate))
            await db.execute("INSERT INTO meta(key, value) VALUES ('a', '1')")
            held.append(asyncio.ensure_future(db.execute("SELECT gate()")))
            await asyncio.sleep(0)  # the gate is queued: the ROLLBACK will wait behind it
            body_done.set()
            raise RuntimeError("roll back")

    task = asyncio.create_task(doomed())
    await body_done.wait()
    for _ in range(5):
        await asyncio.sleep(0)  # the task now awaits its ROLLBACK
    task.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done(), "the cancel propagated before the ROLLBACK ran (the write lock is already free)"
    gate.set()
    with pytest.raises(asyncio.CancelledError) as raised:
        await task
    assert isinstance(raised.value.__context__, RuntimeError)
    await held[0]
    assert await store.get_meta("a") is None
    await store.set_meta("after", "ok")
    assert await store.get_meta("after") == "ok"


async def test_a_failed_commit_is_rolled_back(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        async with store.transaction() as db:
            await db.execute("PRAGMA defer_foreign_keys=ON")  # the violation is reported by COMMIT
            await db.execute(
                "INSERT INTO jobs (id, requester, command, model, prompt, size, prompt_extend, watermark,"
                " queued_at, reroll_of) VALUES (1, 'cli', 'cli', 'm', 'p', 's', 1, 1, ?, 999)",
                (store.now(),),
            )
    await store.set_meta("after", "ok")
    assert await store.get_meta("after") == "ok"
    assert await store.fetch_one("SELECT id FROM jobs") is None
