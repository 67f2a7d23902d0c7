"""The store: one interface (`Store`), two engines. SQLite (`SqliteStore`, here) is the embedded
default; PostgreSQL (bot/storage/postgres.py) is the shared system of record for several
processes on several machines. `open_store(url)` (bot/storage/connect.py) picks one.

The SQLite store: one object owns the connections, every write goes through one lock. Why a
lock even for single statements: an aiosqlite connection is one shared transaction, so a
coroutine's autocommit INSERT issued while another coroutine holds `BEGIN IMMEDIATE` silently
joins (and dies with) that transaction's rollback. Reads use a second connection, so they only
ever see committed rows (WAL lets them run beside the writer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import aiosqlite

from bot.storage.migrations import MIGRATIONS, Migration

log = logging.getLogger("imagine.storage")

Params = Sequence[Any] | dict[str, Any]


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """Timestamps are ISO-8601 UTC text with milliseconds: sortable and readable in reports."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


class Cursor(Protocol):
    """What a statement inside a transaction answers (an aiosqlite cursor, or its asyncpg twin)."""

    rowcount: int

    async def fetchone(self) -> Any: ...

    async def fetchall(self) -> Any: ...


class Transaction(Protocol):
    async def execute(self, sql: str, params: Params = ...) -> Cursor: ...

    async def execute_fetchall(self, sql: str, params: Params = ...) -> Iterable[Any]: ...

    async def executemany(self, sql: str, rows: Iterable[Params]) -> Any: ...


class Store(Protocol):
    """What the storage modules use. SQL is written once for both engines: `?` or `:name`
    parameters, `INSERT … ON CONFLICT`, `RETURNING`, no engine-specific function; rows are read
    by column name (or index)."""

    dialect: Literal["sqlite", "postgresql"]
    #: appended to a SELECT whose rows the transaction then rewrites ("" where writes are serialised)
    for_update: str
    clock: Callable[[], datetime]

    def now(self) -> str: ...

    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    async def write(self, sql: str, params: Params = ...) -> int: ...

    async def write_returning(self, sql: str, params: Params = ...) -> list[Any]: ...

    async def fetch_one(self, sql: str, params: Params = ...) -> Any | None: ...

    async def fetch_all(self, sql: str, params: Params = ...) -> list[Any]: ...

    async def schema_version(self) -> int: ...

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str) -> None: ...

    async def close(self) -> None: ...


class SqliteStore:
    dialect: Literal["sqlite"] = "sqlite"
    for_update = ""  # every write transaction holds SQLite's one write lock (BEGIN IMMEDIATE)

    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        path: Path,
        clock: Callable[[], datetime],
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self.path = path
        self.clock = clock

    # -- lifecycle -----------------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        clock: Callable[[], datetime] = utc_now,
        busy_timeout_ms: int = 5000,
        durable: bool = True,
    ) -> SqliteStore:
        """`durable=False` (synchronous=NORMAL: no fsync per commit; WAL keeps it consistent) is for
        coordination state that may lose its last moments in a power cut, never for the ledger."""
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        writer = await _connect(path, busy_timeout_ms, durable)
        try:
            await writer.execute("PRAGMA journal_mode=WAL")
            applied = await _migrate(writer, migrations)
            reader = await _connect(path, busy_timeout_ms, durable)
        except BaseException:
            await writer.close()
            raise
        if applied:
            log.info("database %s migrated to version %d", path, applied[-1])
        return cls(writer, reader, path, clock)

    async def close(self) -> None:
        async with self._write_lock:
            await self._reader.close()
            await self._writer.close()

    def now(self) -> str:
        return iso(self.clock())

    # -- writes --------------------------------------------------------------------------------------
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """`BEGIN IMMEDIATE` ... COMMIT under the write lock; rolls back on any exception.

        Atomic against cancellation too. aiosqlite runs each call in the connection's thread, in order,
        so a statement whose await is cancelled still runs: a cancelled BEGIN used to leave the
        connection inside a transaction that every later write then failed to BEGIN. So BEGIN, COMMIT
        and ROLLBACK are awaited to their end and the lock is held until the transaction is closed;
        a cancelled body or BEGIN is rolled back. A COMMIT already reached runs anyway, so a
        transaction cancelled during its COMMIT IS committed (the caller still gets CancelledError).

        Never await network I/O inside: the lock would stall every other write.
        """
        async with self._write_lock:
            try:
                await _to_the_end(self._writer.execute("BEGIN IMMEDIATE"))
                yield self._writer
                await _to_the_end(self._writer.execute("COMMIT"))
            except BaseException:
                # Whatever failed or was cancelled (BEGIN, the body, COMMIT), leave no transaction open.
                # sqlite3's rollback() is a no-op outside a transaction, decided in the thread, in order.
                await _to_the_end(self._writer.rollback())
                raise

    async def write(self, sql: str, params: Params = ()) -> int:
        """One statement in its own transaction; returns the number of rows changed."""
        async with self.transaction() as db:
            cursor = await db.execute(sql, params)
            return cursor.rowcount

    async def write_returning(self, sql: str, params: Params = ()) -> list[aiosqlite.Row]:
        """One statement with a RETURNING clause (e.g. a conditional UPSERT), atomically."""
        async with self.transaction() as db:
            cursor = await db.execute(sql, params)
            return list(await cursor.fetchall())

    # -- reads ---------------------------------------------------------------------------------------
    # Each read is ONE aiosqlite call: overlapping cursors on the reader connection would share a
    # read snapshot, and a read issued just after a commit could then see the row from before it.
    async def fetch_one(self, sql: str, params: Params = ()) -> aiosqlite.Row | None:
        rows = await self._reader.execute_fetchall(sql, params)
        return next(iter(rows), None)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[aiosqlite.Row]:
        return list(await self._reader.execute_fetchall(sql, params))

    async def schema_version(self) -> int:
        row = await self.fetch_one("PRAGMA user_version")
        return int(row[0]) if row else 0

    # -- small key/value table for bookkeeping (e.g. the hash of the last command sync) -----------------
    async def get_meta(self, key: str) -> str | None:
        row = await self.fetch_one("SELECT value FROM meta WHERE key = ?", (key,))
        return row["value"] if row else None

    async def set_meta(self, key: str, value: str) -> None:
        await self.write(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


async def _to_the_end(statement: Awaitable[Any]) -> None:
    """Await `statement` until it has run, even if this task is cancelled meanwhile (then re-raise that)."""
    task = asyncio.ensure_future(statement)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait({task})  # cancelling the wait leaves the statement's task running
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("statement failed after its caller was cancelled: %r", task.exception())
        raise cancelled
    task.result()


async def _connect(path: Path, busy_timeout_ms: int, durable: bool = True) -> aiosqlite.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves instead of sqlite3's implicit ones.
    db = await aiosqlite.connect(path, isolation_level=None)
    db.row_factory = aiosqlite.Row
    await db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    # durability over speed: SQLite is not our bottleneck (see Store.open for the one exception)
    await db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    await db.execute("PRAGMA foreign_keys=ON")
    return db


async def _migrate(db: aiosqlite.Connection, migrations: Iterable[Migration]) -> list[int]:
    """Apply every migration above the file's user_version, each in its own transaction."""
    cursor = await db.execute("PRAGMA user_version")
    row = await cursor.fetchone()
    current = int(row[0]) if row else 0
    applied = []
    for migration in sorted(migrations, key=lambda m: m.version):
        if migration.version <= current:
            continue
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in migration.statements:
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version={int(migration.version)}")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        await db.execute("COMMIT")
        applied.append(migration.version)
    return applied
