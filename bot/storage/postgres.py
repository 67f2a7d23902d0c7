"""The PostgreSQL store (asyncpg, a connection pool): the same interface as the SQLite store, for
several bot processes on several machines sharing one system of record.

The storage modules write one SQL text for both engines: `?` or `:name` parameters (turned into
PostgreSQL's `$n` here, outside string literals), `INSERT … ON CONFLICT`, `RETURNING`, and no
engine-specific functions. Each transaction runs on a connection of its own (READ COMMITTED), so
unlike SQLite no process-wide write lock is needed: every quota, budget and state change is one
conditional statement, which PostgreSQL makes atomic with row locks. Where a transaction reads
a row it then rewrites, it asks for the row lock with `store.for_update`.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from bot.storage.db import Params, iso, utc_now
from bot.storage.migrations import Migration
from bot.storage.migrations_pg import PG_MIGRATIONS

log = logging.getLogger("imagine.storage")

#: serialises migrations of one database (two processes starting together)
_MIGRATION_LOCK = 0x1_6D61_6769  # "imagine" in spirit; any constant shared by every process


class _Result:
    """What a statement returned, shaped like the aiosqlite cursor the storage modules use."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[asyncpg.Record], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    async def fetchone(self) -> asyncpg.Record | None:
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[asyncpg.Record]:
        return list(self._rows)


class Transaction:
    """One connection inside one transaction."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def execute(self, sql: str, params: Params = ()) -> _Result:
        query, names, returns_rows = _translate(sql)
        args = _arguments(names, params)
        if returns_rows:
            rows = await self._connection.fetch(query, *args)
            return _Result(rows, len(rows))
        status = await self._connection.execute(query, *args)
        count = status.rsplit(" ", 1)[-1]
        return _Result([], int(count) if count.isdigit() else 0)

    async def execute_fetchall(self, sql: str, params: Params = ()) -> list[asyncpg.Record]:
        return await (await self.execute(sql, params)).fetchall()

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        query, names, _ = _translate(sql)
        await self._connection.executemany(query, [_arguments(names, params) for params in rows])


class PostgresStore:
    dialect = "postgresql"
    #: appended to a SELECT whose rows the transaction then rewrites (a row lock)
    for_update = " FOR UPDATE"

    def __init__(self, pool: asyncpg.Pool, url: str, clock: Callable[[], datetime]) -> None:
        self._pool = pool
        self.url = url
        self.clock = clock

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        migrations: Sequence[Migration] = PG_MIGRATIONS,
        clock: Callable[[], datetime] = utc_now,
        min_size: int = 1,
        max_size: int = 10,
    ) -> PostgresStore:
        """`url`: postgresql://user@host:port/db (other query parameters, such as search_path,
        are passed to the server as settings)."""
        pool = await asyncpg.create_pool(dsn=_dsn(url), min_size=min_size, max_size=max_size)
        try:
            applied = await _migrate(pool, migrations)
        except BaseException:
            await pool.close()
            raise
        if applied:
            log.info("database %s migrated to version %d", _redacted(url), applied[-1])
        return cls(pool, url, clock)

    async def close(self) -> None:
        await self._pool.close()

    def now(self) -> str:
        return iso(self.clock())

    # -- writes --------------------------------------------------------------------------------------
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """BEGIN … COMMIT on a pooled connection; rolled back on any exception or cancellation."""
        async with self._pool.acquire() as connection, connection.transaction():
            yield Transaction(connection)

    async def write(self, sql: str, params: Params = ()) -> int:
        async with self.transaction() as db:
            return (await db.execute(sql, params)).rowcount

    async def write_returning(self, sql: str, params: Params = ()) -> list[asyncpg.Record]:
        async with self.transaction() as db:
            return await (await db.execute(sql, params)).fetchall()

    # -- reads ---------------------------------------------------------------------------------------
    async def fetch_one(self, sql: str, params: Params = ()) -> asyncpg.Record | None:
        query, names, _ = _translate(sql)
        return await self._pool.fetchrow(query, *_arguments(names, params))

    async def fetch_all(self, sql: str, params: Params = ()) -> list[asyncpg.Record]:
        query, names, _ = _translate(sql)
        return list(await self._pool.fetch(query, *_arguments(names, params)))

    async def schema_version(self) -> int:
        return int(await self._pool.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))

    # -- small key/value table for bookkeeping -----------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        row = await self.fetch_one("SELECT value FROM meta WHERE key = ?", (key,))
        return row["value"] if row else None

    async def set_meta(self, key: str, value: str) -> None:
        await self.write(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


# -- the one SQL text for both engines ----------------------------------------------------------------
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|::|\?|(?<![\w:]):([A-Za-z_]\w*)")
_ROWS = re.compile(r"^\s*(SELECT|WITH|VALUES)\b|\bRETURNING\b", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def _translate(sql: str) -> tuple[str, tuple[str, ...] | int, bool]:
    """`?` and `:name` -> `$n`; returns the query, the parameter names (or the count of `?`),
    and whether it returns rows."""
    names: list[str] = []
    positional = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal positional
        token = match.group(0)
        if token == "?":
            positional += 1
            return f"${positional}"
        name = match.group(1)
        if name is None:  # a string literal, a quoted name, or a :: cast
            return token
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    query = _TOKENS.sub(replace, sql)
    if names and positional:
        raise ValueError("mix of ? and :name parameters in one statement")
    return query, tuple(names) if names else positional, bool(_ROWS.search(query))


def _arguments(names: tuple[str, ...] | int, params: Params) -> list[Any]:
    if isinstance(names, tuple):
        if not isinstance(params, dict):
            raise TypeError("named parameters need a dict")
        return [params[name] for name in names]
    return list(params.values()) if isinstance(params, dict) else list(params)


def _dsn(url: str) -> str:
    """asyncpg takes postgresql:// and postgres://; SQLAlchemy-style driver suffixes are dropped."""
    return re.sub(r"^postgres(?:ql)?(\+\w+)?://", "postgresql://", url)


def _redacted(url: str) -> str:
    """The URL without its password, for logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


async def _migrate(pool: asyncpg.Pool, migrations: Sequence[Migration]) -> list[int]:
    """Apply every migration above the recorded version, each in its own transaction, one
    process at a time (an advisory lock held for the transaction)."""
    applied: list[int] = []
    async with pool.acquire() as connection:
        async with connection.transaction():  # two processes starting on a fresh database: one creates it
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
        for migration in sorted(migrations, key=lambda m: m.version):
            async with connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                done = await connection.fetchval(
                    "SELECT 1 FROM schema_migrations WHERE version = $1", migration.version
                )
                if done:
                    continue
                for statement in migration.statements:
                    await connection.execute(statement)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                    migration.version,
                    iso(utc_now()),
                )
                applied.append(migration.version)
    return applied
