"""`DATABASE_URL` -> a store: `sqlite:///path/to/file.db` (the default, nothing to install) or
`postgresql://user@host:port/database` (several processes, several machines)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from bot.storage.db import SqliteStore, Store, utc_now
from bot.storage.postgres import PostgresStore


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://", "postgresql+"))


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


async def open_store(url: str, *, clock: Callable[[], datetime] = utc_now) -> Store:
    if is_postgres(url):
        return await PostgresStore.open(url, clock=clock)
    return await SqliteStore.open(sqlite_path(url), clock=clock)
