"""The upstream budget shared by every process that uses the same store (the bot, and
`imagine-bot generate` beside it): the provider's limits are per account, not per process.

Each process keeps its own exact limiter (bot/limiter.py); before granting a permit it also
checks, in one write transaction, the permits of every *other* process recorded here: their
stamped starts (both sliding windows), their permits granted but not yet sent (they count as
starting now), the ones still in flight (concurrency) and the account-wide pause after a 429.
Then it records its own grant. SQLite's write lock serialises grants across processes.

The records live in a file of their own beside the database (`imagine-upstream.db` next to
`imagine.db`): coordination, not the ledger. So a grant neither waits behind admissions on the
ledger's write lock nor pays an fsync (synchronous=NORMAL): a power cut may lose the last
moments of it, which matter only for the next minute's windows.

A process's own stamps and releases are written behind (in order, by one task), since its own
view is exact in memory: until they land, other processes see its permit as pending or in
flight, which only makes them wait a little longer, never send too much. A permit's lease is
short (`LEASE_S`) and renewed while it is held, so a process that dies (SIGKILL) stops holding
a slot, or counting as about to start, within seconds; its stamped starts still count.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bot.rate_windows import Limits, LocalView, window_delay
from bot.storage.connect import is_postgres, sqlite_path
from bot.storage.db import SqliteStore, Store
from bot.storage.migrations import Migration

log = logging.getLogger("imagine.limiter")

MIGRATIONS = (
    Migration(
        1,
        "permits and the pause of the upstream budget",
        (
            """
            CREATE TABLE upstream_permits (
                id          INTEGER PRIMARY KEY,
                owner       TEXT NOT NULL,  -- host:pid:random of the process holding it
                granted_at  REAL NOT NULL,  -- Unix seconds (shared by every process): may start from then on
                sent_at     REAL,           -- when its request was handed to the network: the start
                released_at REAL,           -- the attempt is over: its concurrency slot is free
                lease_until REAL NOT NULL   -- a dead process's permit stops holding a slot here
            )
            """,
            "CREATE TABLE upstream_pause (id INTEGER PRIMARY KEY CHECK (id = 1), until REAL NOT NULL)",
        ),
    ),
)
#: a held permit's lease, renewed every LEASE_RENEW_S while it is held
LEASE_S = 10.0
LEASE_RENEW_S = 3.0


@dataclass(frozen=True, slots=True)
class Verdict:
    permit_id: int | None  # the recorded grant, or None: not now
    delay: float  # when not granted: seconds until the windows could allow it
    full: bool  # when not granted: every concurrency slot is held


def budget_path(database_path: Path) -> Path:
    """`data/imagine.db` -> `data/imagine-upstream.db`."""
    return database_path.with_name(f"{database_path.stem}-upstream{database_path.suffix or '.db'}")


#: grants on PostgreSQL are serialised by this transaction-scoped advisory lock
_GRANT_LOCK = 0x75_7073_7472  # any constant shared by every process


class SharedBudget:
    @classmethod
    async def open(cls, database_url: str, store: Store, *, now: Callable[[], float] = time.time) -> SharedBudget:
        """On PostgreSQL the budget's tables live in the shared database (`store`); on SQLite in
        a file of their own beside the database (see the module docstring)."""
        if is_postgres(database_url):
            return cls(store, now=now, owns_store=False)
        own = await SqliteStore.open(budget_path(sqlite_path(database_url)), migrations=MIGRATIONS, durable=False)
        return cls(own, now=now, owns_store=True)

    async def close(self) -> None:
        await self.flush()
        if self._owns_store:
            await self._store.close()

    def __init__(self, store: Store, *, now: Callable[[], float] = time.time, owns_store: bool = True) -> None:
        self._store = store
        self._owns_store = owns_store
        self._now = now
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._writes: asyncio.Queue[tuple[str, tuple[object, ...]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._held: set[int] = set()  # this process's permits not yet released
        self._renewer: asyncio.Task[None] | None = None

    async def try_grant(self, limits: Limits, mine: LocalView, lead_s: float = 0.0) -> Verdict:
        """Grant and record one permit if this process's and every other process's use allow it
        within `lead_s`; a granted verdict's `delay` is how long its request must still wait."""
        offset = self._now() - mine.now  # this process's clock -> the shared one, at the same instant
        async with self._store.transaction() as db:
            if self._store.dialect == "postgresql":  # SQLite's BEGIN IMMEDIATE serialises already
                await db.execute("SELECT pg_advisory_xact_lock(?)", (_GRANT_LOCK,))
            now = self._now()
            await db.execute(
                "DELETE FROM upstream_permits WHERE (released_at IS NOT NULL OR lease_until < :now)"
                " AND (sent_at IS NULL OR sent_at < :old)",
                {"now": now, "old": now - 61.0 - limits.margin_s},
            )
            cursor = await db.execute(
                "SELECT granted_at, sent_at, released_at, lease_until FROM upstream_permits WHERE owner != ?",
                (self.owner,),
            )
            others = await cursor.fetchall()
            cursor = await db.execute("SELECT until FROM upstream_pause")
            row = await cursor.fetchone()
            paused_until = max(float(row[0]) if row else 0.0, mine.paused_until + offset)
            live = [r for r in others if r["released_at"] is None and r["lease_until"] > now]
            in_flight = mine.held + len(live)
            # a pending permit may start from its granted_at ("not before"), or now if that passed
            pending = [t + offset for t in mine.pending] + [r["granted_at"] for r in live if r["sent_at"] is None]
            starts = sorted([t + offset for t in mine.starts] + [r["sent_at"] for r in others if r["sent_at"]])
            delay = window_delay(
                starts,
                pending,
                now,
                rpm=limits.rpm,
                per_second=limits.per_second,
                margin_s=limits.margin_s,
                paused_until=paused_until,
            )
            if in_flight >= limits.concurrency:
                return Verdict(None, delay, True)
            if delay > lead_s + 1e-6:  # float noise: a microsecond early is on time
                return Verdict(None, delay, False)
            cursor = await db.execute(
                "INSERT INTO upstream_permits (owner, granted_at, lease_until) VALUES (?, ?, ?) RETURNING id",
                (self.owner, now + max(0.0, delay), now + LEASE_S),
            )
            permit_id = int((await cursor.fetchone())[0])
        self._held.add(permit_id)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_leases(), name="upstream-leases")
        return Verdict(permit_id, max(0.0, delay), False)

    # -- written behind, in order ------------------------------------------------------------
    def stamp(self, permit_id: int) -> None:
        self._enqueue("UPDATE upstream_permits SET sent_at = ? WHERE id = ?", (self._now(), permit_id))

    def release(self, permit_id: int) -> None:
        self._held.discard(permit_id)
        # a permit never sent is forgotten; a sent one stays a start until it leaves the window
        self._enqueue(
            "UPDATE upstream_permits SET released_at = ? WHERE id = ? AND sent_at IS NOT NULL", (self._now(), permit_id)
        )
        self._enqueue("DELETE FROM upstream_permits WHERE id = ? AND sent_at IS NULL", (permit_id,))

    def pause(self, seconds: float) -> None:
        self._enqueue(
            "INSERT INTO upstream_pause (id, until) VALUES (1, ?)"
            " ON CONFLICT (id) DO UPDATE SET until = CASE WHEN excluded.until > upstream_pause.until"
            " THEN excluded.until ELSE upstream_pause.until END",
            (self._now() + seconds,),
        )

    async def flush(self) -> None:
        """Wait until every write queued so far is in the store (before closing it)."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        if self._writer is not None and not self._writer.done():
            await self._writes.join()
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        self._writer = None

    def _enqueue(self, sql: str, params: tuple[object, ...]) -> None:
        self._writes.put_nowait((sql, params))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_behind(), name="upstream-budget")

    async def _renew_leases(self) -> None:
        """While this process holds permits, keep their leases from running out."""
        while self._held:
            await asyncio.sleep(LEASE_RENEW_S)
            held = sorted(self._held)
            if held:
                marks = ", ".join("?" * len(held))
                self._enqueue(
                    f"UPDATE upstream_permits SET lease_until = ? WHERE id IN ({marks}) AND released_at IS NULL",
                    (self._now() + LEASE_S, *held),
                )

    async def _write_behind(self) -> None:
        while True:
            sql, params = await self._writes.get()
            try:
                await self._store.write(sql, params)
            except Exception:  # never fatal: other processes then see the permit held until its lease ends
                log.exception("could not record the upstream budget")
            finally:
                self._writes.task_done()
