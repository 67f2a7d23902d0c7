"""The store's part of the readiness probe: a real write, committed like any other.

An upsert of one row in `meta` (no table of its own, nothing that grows): it needs the write
lock and a commit, so it fails when writes fail, a database set read-only, a full disk, a lost
connection, and hangs when another holder keeps the write lock (the caller bounds the wait).
Every process writes the same row: on PostgreSQL one short row lock per probe.
"""

from __future__ import annotations

from bot.storage.db import Store

PROBE_KEY = "health_probe"


async def probe_write(store: Store) -> None:
    await store.set_meta(PROBE_KEY, store.now())
