"""The fair queue kept in the store, so that any process can take the next job: jobs are claimed,
not held in memory.

The order is the one of bot/fair_queue.py (guilds take turns; inside a guild, users take turns;
each user's jobs in order), written as turns: `queue_turns` holds one row per guild with waiting
jobs (`user_key = ''`) and one per user with waiting jobs in that guild, each with a `turn`
number; the lowest goes next. Taking a job gives its user, and its guild, a new turn from a
counter that only grows: the back of the line. A guild or user that appears gets one too. A job
pushed back to the front (a 429, or reclaimed from a dead process) gets negative numbers, below
every other. So the claim is three indexed lookups (the first guild, its first user, that user's
first job), O(log n), and it holds across processes: it is the same order whichever process asks.

A claimed job carries its process (`claimed_by`) and a lease (`lease_until`) that the process
renews while it works (`renew`). When a process dies its leases run out, and any process puts its
jobs back at the head of their queues (`reclaim_expired`), so they run again; a job caught
mid-request is resubmitted at most once, as after a restart.

On PostgreSQL concurrent claimers skip each other's locked rows (`FOR UPDATE SKIP LOCKED`): two
processes asking at once take the first and the second guild in turn. On SQLite every write
transaction holds the one write lock, so claims are simply serialised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bot.fair_queue import FairQueue, QueueItem
from bot.storage.db import Store, Transaction, iso

GUILD_TURN = ""  # the user_key of a guild's own row in queue_turns
UNFINISHED = ("queued", "submitting", "generated")


@dataclass(frozen=True, slots=True)
class Reclaimed:
    """A job whose process died: put back in the queue, or (past the request) to be finished here."""

    job_id: int
    state: str
    attempts: int


class SharedQueue:
    def __init__(self, store: Store, owner: str, *, lease_s: float = 30.0, now: Callable[[], float] = time.time):
        self._store = store
        self.owner = owner
        self.lease_s = lease_s
        self._now = now
        postgres = store.dialect == "postgresql"
        self._skip_locked = " FOR UPDATE SKIP LOCKED" if postgres else ""
        self._lock = store.for_update

    # -- into the queue -------------------------------------------------------------------------
    async def push(self, job_id: int, guild_key: str, user_key: str, *, front: bool = False) -> None:
        async with self._store.transaction() as db:
            await self.push_in(db, job_id, guild_key, user_key, front=front)

    async def push_in(
        self, db: Transaction, job_id: int, guild_key: str, user_key: str, *, front: bool = False
    ) -> None:
        """Queue a job inside the caller's transaction (e.g. the one that writes the job).

        At the back of its user's queue, or (`front`) at the head, with its user and its guild
        next in turn. The guild's row is written first: it is what serialises a guild's pushes
        and claims on PostgreSQL.
        """
        number = await self._next(db)
        turn = -number if front else number
        on_conflict = "DO UPDATE SET turn = excluded.turn" if front else "DO NOTHING"
        for who in (GUILD_TURN, user_key):
            await db.execute(
                "INSERT INTO queue_turns (guild_key, user_key, turn) VALUES (?, ?, ?)"
                f" ON CONFLICT (guild_key, user_key) {on_conflict}",
                (guild_key, who, turn),
            )
        await db.execute(
            "UPDATE jobs SET queue_guild = ?, fair_order = ?, claimed_by = NULL, lease_until = NULL WHERE id = ?",
            (guild_key, turn, job_id),
        )

    # -- out of it ----------------------------------------------------------------------------
    async def claim(self) -> QueueItem | None:
        """Take the next job in fair order for this process, under a lease; None if none waits."""
        async with self._store.transaction() as db:
            while True:
                guild = await _first(
                    db,
                    "SELECT guild_key FROM queue_turns WHERE user_key = ? ORDER BY turn LIMIT 1" + self._skip_locked,
                    (GUILD_TURN,),
                )
                if guild is None:
                    return None
                guild_key = guild["guild_key"]
                user = await _first(
                    db,
                    "SELECT user_key FROM queue_turns WHERE guild_key = ? AND user_key <> ? ORDER BY turn LIMIT 1"
                    + self._lock,
                    (guild_key, GUILD_TURN),
                )
                if user is None:  # no user left in this guild: its turn row is stale
                    await db.execute("DELETE FROM queue_turns WHERE guild_key = ?", (guild_key,))
                    continue
                user_key = user["user_key"]
                job = await _first(
                    db,
                    "SELECT id FROM jobs WHERE queue_guild = ? AND requester = ? AND state = 'queued'"
                    " AND claimed_by IS NULL ORDER BY fair_order LIMIT 1" + self._skip_locked,
                    (guild_key, user_key),
                )
                if job is None:  # the user's jobs left (cancelled, claimed): drop the turn, look again
                    await db.execute(
                        "DELETE FROM queue_turns WHERE guild_key = ? AND user_key = ?", (guild_key, user_key)
                    )
                    await self._retire_guild_if_empty(db, guild_key)
                    continue
                job_id = int(job["id"])
                await db.execute(
                    "UPDATE jobs SET claimed_by = ?, lease_until = ? WHERE id = ?",
                    (self.owner, self._now() + self.lease_s, job_id),
                )
                await self._next_turn(db, guild_key, user_key)
                return QueueItem(job_id, guild_key, user_key, 0.0)

    async def take(self, job_id: int) -> bool:
        """Claim one given job for this process (a follower, a job to deliver); False if another has it."""
        async with self._store.transaction() as db:
            cursor = await db.execute(
                "UPDATE jobs SET claimed_by = ?, lease_until = ? WHERE id = ? AND state IN (?, ?, ?)"
                " AND (claimed_by IS NULL OR claimed_by = ? OR lease_until < ?) RETURNING queue_guild, requester",
                (self.owner, self._now() + self.lease_s, job_id, *UNFINISHED, self.owner, self._now()),
            )
            row = await cursor.fetchone()
            if row is None:
                return False
            if row["queue_guild"] is not None:  # it may still have been waiting in the turns
                await self._next_turn(db, row["queue_guild"], row["requester"])
            return True

    async def requeue_front(self, job_id: int) -> None:
        """Back to the head of its queue, unclaimed (the upstream said 429: not the job's turn)."""
        async with self._store.transaction() as db:
            row = await _first(db, "SELECT queue_guild, requester FROM jobs WHERE id = ?", (job_id,))
            if row is not None and row["queue_guild"] is not None:
                await self.push_in(db, job_id, row["queue_guild"], row["requester"], front=True)

    async def remove(self, job_id: int) -> None:
        """Out of the queue (cancelled before it was taken); the turns follow on the next claim."""
        await self._store.write(
            "UPDATE jobs SET queue_guild = NULL, fair_order = NULL WHERE id = ? AND claimed_by IS NULL", (job_id,)
        )

    async def release(self, job_id: int) -> None:
        """The job is finished (or handed back): no lease any more."""
        await self._store.write(
            "UPDATE jobs SET claimed_by = NULL, lease_until = NULL WHERE id = ? AND claimed_by = ?",
            (job_id, self.owner),
        )

    # -- leases ---------------------------------------------------------------------------------
    async def renew(self) -> int:
        """Extend the lease of every unfinished job this process holds; returns how many."""
        return await self._store.write(
            "UPDATE jobs SET lease_until = ? WHERE claimed_by = ? AND state IN (?, ?, ?)",
            (self._now() + self.lease_s, self.owner, *UNFINISHED),
        )

    async def reclaim_expired(self) -> list[Reclaimed]:
        """Jobs of processes whose leases ran out. Queued ones, and ones caught mid-request (the
        one resubmission after a crash), go back to the head of their queues; the rest (a
        second interruption, or an image generated and not delivered) are claimed by this
        process and returned for it to finish."""
        now = self._now()
        reclaimed: list[Reclaimed] = []
        async with self._store.transaction() as db:
            cursor = await db.execute(
                "SELECT id, state, attempts, queue_guild, guild_id, requester FROM jobs WHERE claimed_by IS NOT NULL"
                " AND lease_until < ? AND state IN (?, ?, ?) ORDER BY fair_order" + self._skip_locked,
                (now, *UNFINISHED),
            )
            for row in await cursor.fetchall():
                job_id, state, attempts = int(row["id"]), row["state"], int(row["attempts"])
                if state == "queued" or (state == "submitting" and attempts < 2):
                    await self._requeue(db, row)
                else:
                    await db.execute(
                        "UPDATE jobs SET claimed_by = ?, lease_until = ? WHERE id = ?",
                        (self.owner, now + self.lease_s, job_id),
                    )
                reclaimed.append(Reclaimed(job_id, state, attempts))
            # Strays: admitted (the row written) by a process that died before it queued them.
            # Bot jobs only: a CLI job belongs to its own process. Old on the store's own clock,
            # which wrote queued_at.
            cursor = await db.execute(
                "SELECT id, queue_guild, guild_id, requester FROM jobs WHERE state = 'queued' AND claimed_by IS NULL"
                " AND fair_order IS NULL AND guild_id IS NOT NULL AND queued_at < ?" + self._skip_locked,
                (iso(self._store.clock() - timedelta(seconds=self.lease_s)),),
            )
            for row in await cursor.fetchall():
                await self._requeue(db, row)
                reclaimed.append(Reclaimed(int(row["id"]), "queued", 0))
        return reclaimed

    async def hand_back(self) -> int:
        """At a graceful stop: the jobs this process took but never sent go back to the head of
        their queues at once (not when the lease runs out). Returns how many."""
        async with self._store.transaction() as db:
            cursor = await db.execute(
                "SELECT id, queue_guild, guild_id, requester FROM jobs WHERE claimed_by = ? AND state = 'queued'",
                (self.owner,),
            )
            rows = await cursor.fetchall()
            for row in rows:
                await self._requeue(db, row)
        return len(rows)

    async def _requeue(self, db: Transaction, row: Any) -> None:
        """Back to the head of its queue, queued and unclaimed. A job that was never in the turns
        (it followed an identical request) joins its guild's queue: the key of bot.contracts.guild_key."""
        gid = row["guild_id"]
        queue = row["queue_guild"] or (f"guild:{gid}" if gid is not None else "cli")
        await db.execute("UPDATE jobs SET state = 'queued' WHERE id = ?", (int(row["id"]),))
        await self.push_in(db, int(row["id"]), queue, row["requester"], front=True)

    # -- the order, for positions ---------------------------------------------------------------
    async def snapshot(self) -> FairQueue:
        """Every waiting job, in the order claims will take them: the turns read back into a
        FairQueue (for positions, ETAs and admission estimates in every process)."""
        turns = await self._store.fetch_all("SELECT guild_key, user_key FROM queue_turns ORDER BY turn")
        rows = await self._store.fetch_all(
            "SELECT id, queue_guild, requester FROM jobs WHERE state = 'queued' AND claimed_by IS NULL"
            " AND queue_guild IS NOT NULL ORDER BY fair_order"
        )
        guilds = [t["guild_key"] for t in turns if t["user_key"] == GUILD_TURN]
        users: dict[str, list[str]] = {}
        for t in turns:
            if t["user_key"] != GUILD_TURN:
                users.setdefault(t["guild_key"], []).append(t["user_key"])
        items = [QueueItem(int(r["id"]), r["queue_guild"], r["requester"], 0.0) for r in rows]
        return FairQueue.restore(guilds, users, items)

    async def waiting(self) -> list[QueueItem]:
        return (await self.snapshot()).order()

    # -- internals ------------------------------------------------------------------------------
    async def _next(self, db: Transaction) -> int:
        if self._store.dialect == "postgresql":  # a sequence: no row lock held to the commit
            row = await _first(db, "SELECT nextval('queue_turn_seq') AS value", ())
        else:
            row = await _first(db, "UPDATE queue_counter SET value = value + 1 WHERE id = 1 RETURNING value", ())
        assert row is not None
        return int(row["value"])

    async def _next_turn(self, db: Transaction, guild_key: str, user_key: str) -> None:
        """After a job of (guild, user) left the line: each goes to the back, or out if empty."""
        more = await _first(
            db,
            "SELECT 1 AS one FROM jobs WHERE queue_guild = ? AND requester = ? AND state = 'queued'"
            " AND claimed_by IS NULL LIMIT 1",
            (guild_key, user_key),
        )
        if more is None:
            await db.execute("DELETE FROM queue_turns WHERE guild_key = ? AND user_key = ?", (guild_key, user_key))
        else:
            await db.execute(
                "UPDATE queue_turns SET turn = ? WHERE guild_key = ? AND user_key = ?",
                (await self._next(db), guild_key, user_key),
            )
        if not await self._retire_guild_if_empty(db, guild_key):
            await db.execute(
                "UPDATE queue_turns SET turn = ? WHERE guild_key = ? AND user_key = ?",
                (await self._next(db), guild_key, GUILD_TURN),
            )

    async def _retire_guild_if_empty(self, db: Transaction, guild_key: str) -> bool:
        users = await _first(
            db,
            "SELECT 1 AS one FROM queue_turns WHERE guild_key = ? AND user_key <> ? LIMIT 1",
            (guild_key, GUILD_TURN),
        )
        if users is None:
            await db.execute("DELETE FROM queue_turns WHERE guild_key = ?", (guild_key,))
            return True
        return False


async def _first(db: Transaction, sql: str, params: Any) -> Any | None:
    return await (await db.execute(sql, params)).fetchone()
