"""The doctor's checks on this machine: the settings load, the store opens, migrates and takes a
write, the cache directory is writable."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from bot.config import Settings, load_settings
from bot.doctor.report import Finding, fail, ok, printable
from bot.errors import ConfigError
from bot.storage.connect import open_store
from bot.storage.upstream import SharedBudget

#: a database that does not answer within this long is reported, not waited for (asyncpg's own
#: connect timeout is a minute)
STORE_TIMEOUT_S = 15.0
SETTINGS, STORE, CACHE_DIR = "settings", "store", "cache dir"
#: the store's one write: when the doctor last found it writable (a row in `meta`)
CHECKED_AT_KEY = "doctor_checked_at"


def check_settings() -> tuple[Finding, Settings | None]:
    try:
        settings = load_settings()
    except ConfigError as exc:
        return fail(SETTINGS, exc.message, "the line names the variable; change it and run again."), None
    env_file = Path(".env")
    source = f"the environment and {env_file.resolve()}" if env_file.is_file() else "the environment (no .env here)"
    return ok(SETTINGS, f"loaded from {source}"), settings


def describe_store(settings: Settings) -> str:
    """The database without its password: `SQLite data/imagine.db`, `PostgreSQL db.internal:5432/imagine`."""
    if not settings.uses_postgres:
        return f"SQLite {settings.database_path}"
    parts = urlsplit(settings.database_url)
    port = f":{parts.port}" if parts.port else ""
    return f"PostgreSQL {parts.hostname or 'localhost'}{port}{parts.path}"


async def check_store(settings: Settings) -> Finding:
    """Open it as the bot does (migrations included), read its schema version, write one row, and
    open the upstream budget beside it (its own file on SQLite, tables in the database on PostgreSQL)."""
    where = describe_store(settings)
    fix = (
        "check DATABASE_URL, that the server is running and reachable, and that its user may create tables."
        if settings.uses_postgres
        else "DATABASE_URL must name a file in a directory this user can create and write."
    )
    try:
        async with asyncio.timeout(STORE_TIMEOUT_S):
            store = await open_store(settings.database_url)
            try:
                version = await store.schema_version()
                await store.set_meta(CHECKED_AT_KEY, store.now())
                budget = await SharedBudget.open(settings.database_url, store)
                await budget.close()
            finally:
                await store.close()
    except TimeoutError:
        return fail(STORE, f"{where} did not answer within {STORE_TIMEOUT_S:g} s.", fix)
    except Exception as exc:  # whatever the engine raises: reported, not a crash of the doctor
        error = f"{type(exc).__name__}: {printable(str(exc))}"
        return fail(STORE, f"{where} could not be opened or written: {error}", fix)
    return ok(STORE, f"{where} opened, migrated (schema version {version}) and written")


def check_cache_dir(settings: Settings) -> Finding:
    """Blocking (mkdir, a file): run it in a thread."""
    path = settings.cache_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-") as probe:
            probe.write(b"imagine-bot doctor")
            probe.flush()
        free_mib = shutil.disk_usage(path).free // (1024 * 1024)
    except OSError as exc:
        return fail(
            CACHE_DIR,
            f"{path} is not a writable directory ({exc.strerror or type(exc).__name__}).",
            "set CACHE_DIR to a directory this user can write, or fix its permissions.",
        )
    return ok(CACHE_DIR, f"{path} is writable ({free_mib:,} MiB free; CACHE_MAX_MB is {settings.cache_max_mb})")
