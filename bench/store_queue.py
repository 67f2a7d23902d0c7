"""Benchmark: the shared queue's claim and the admission transaction, on PostgreSQL against SQLite
in the same run, with a big backlog (10,000 queued jobs in 500 guilds by default).

For each engine, a fresh store (a SQLite file in a temp folder; a schema of its own on the
PostgreSQL server at IMAGINE_TEST_POSTGRES, default postgresql://postgres@127.0.0.1:5432/test)
is filled with the backlog (in bulk: the filling is not measured), then timed, one at a time:
- claim: `SharedQueue.claim()`, the next job in fair order under a lease (three indexed lookups
  and the turn updates, in one transaction);
- admission: what accepting a request writes, in one transaction each: the job row, the
  cooldown stamp and four quota reservations (`JobStore.insert`), then its place in the queue
  (`SharedQueue.push`).
Printed: p50 and p99 in milliseconds per engine, and PostgreSQL's as a ratio to SQLite's.

    .venv/bin/python -m bench.store_queue [--jobs 10000] [--guilds 500] [--samples 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from bot.storage.connect import open_store
from bot.storage.db import Store
from bot.storage.jobs import Cooldown, JobStore, NewJob
from bot.storage.quotas import Charge
from bot.storage.shared_queue import GUILD_TURN, SharedQueue

POSTGRES_URL = os.environ.get("IMAGINE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
USERS_PER_GUILD = 4


async def fill(store: Store, jobs: int, guilds: int) -> None:
    """The backlog, as pushes would have left it: job rows, their order, the turns."""
    rows, turns = [], {}
    for n in range(jobs):
        guild, user = f"guild:{n % guilds + 1}", str(n % (guilds * USERS_PER_GUILD))
        rows.append((n + 1, n % guilds + 1, user, "imagine", "qwen-image-plus", f"backlog {n}", "1328*1328", guild, n))
        turns.setdefault((guild, GUILD_TURN), n)
        turns.setdefault((guild, user), n)
    async with store.transaction() as db:
        await db.executemany(
            "INSERT INTO jobs (id, guild_id, requester, command, model, prompt, size, prompt_extend, watermark,"
            " queued_at, queue_guild, fair_order) VALUES (?, ?, ?, ?, ?, ?, ?, 1, 1, '2026-12-05T00:00:00', ?, ?)",
            rows,
        )
        await db.executemany(
            "INSERT INTO queue_turns (guild_key, user_key, turn) VALUES (?, ?, ?)",
            [(g, u, t) for (g, u), t in turns.items()],
        )
        if store.dialect == "postgresql":
            await db.execute(f"SELECT setval('queue_turn_seq', {jobs + 1})")
        else:
            await db.execute("UPDATE queue_counter SET value = ?", (jobs + 1,))


async def measure(url: str, jobs: int, guilds: int, samples: int) -> dict[str, list[float]]:
    store = await open_store(url)
    try:
        await fill(store, jobs, guilds)
        queue, job_store = SharedQueue(store, "bench"), JobStore(store)
        claims, admissions = [], []
        for _ in range(samples):
            started = time.perf_counter()
            assert await queue.claim() is not None
            claims.append(time.perf_counter() - started)
        for n in range(samples):
            job_id, guild, user = 10**9 + n, n % guilds + 1, f"new-{n}"
            subject = f"{guild}:{user}"
            charges = [
                Charge("user_day", subject, "2026-12-05", 1, 20),
                Charge("user_month", subject, "2026-12", 1, 200),
                Charge("guild_day_fen", str(guild), "2026-12-05", 18, 10**9),
                Charge("guild_month_fen", str(guild), "2026-12", 18, 10**9),
            ]
            job = NewJob(job_id, user, "imagine", "qwen-image-plus", f"new {n}", "1328*1328", "", True, True,
                         guild_id=guild)  # fmt: skip
            started = time.perf_counter()
            await job_store.insert(job, charges=charges, cooldown=Cooldown(subject, n, 0))
            await queue.push(job_id, f"guild:{guild}", user)
            admissions.append(time.perf_counter() - started)
        return {"claim": claims, "admission": admissions}
    finally:
        await store.close()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def run(jobs: int = 10_000, guilds: int = 500, samples: int = 500) -> None:
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="imagine-bench-") as folder:
        results["sqlite"] = await measure(f"sqlite:///{Path(folder) / 'bench.db'}", jobs, guilds, samples)
    schema = f"imagine_bench_{secrets.token_hex(4)}"
    try:
        admin = await asyncpg.connect(POSTGRES_URL)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"PostgreSQL is not reachable at {POSTGRES_URL} ({type(exc).__name__}): SQLite only")
    else:
        try:
            await admin.execute(f"CREATE SCHEMA {schema}")
            separator = "&" if "?" in POSTGRES_URL else "?"
            results["postgresql"] = await measure(
                f"{POSTGRES_URL}{separator}search_path={schema}", jobs, guilds, samples
            )
        finally:
            await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await admin.close()
    print(f"the shared queue with {jobs:,} queued jobs in {guilds} guilds, {samples} samples each (ms)")
    print(f"{'':<12}{'operation':<12}{'p50':>8}{'p99':>8}{'mean':>8}  vs SQLite (p50, p99)")
    for engine, ops in results.items():
        for op, samples_s in ops.items():
            base = results["sqlite"][op]
            p50, p99 = (percentile(samples_s, q) / percentile(base, q) for q in (0.5, 0.99))
            ratio = f"{p50:.2f}x, {p99:.2f}x" if engine != "sqlite" else "(baseline)"
            print(
                f"{engine:<12}{op:<12}{percentile(samples_s, 0.5):>8.2f}{percentile(samples_s, 0.99):>8.2f}"
                f"{statistics.fmean(samples_s) * 1000:>8.2f}  {ratio}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--guilds", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.guilds, args.samples))


if __name__ == "__main__":
    main()
