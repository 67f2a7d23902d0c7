"""Shared fixtures: the loopback fake image API, isolated settings, a real SQLite file in tmp, and
for tests marked `both_backends` the real PostgreSQL server too (a schema of their own per test).

PostgreSQL is the machine's server at IMAGINE_TEST_POSTGRES (default
postgresql://postgres@127.0.0.1:5432/test). Where it cannot be reached those tests are skipped
with one line saying so, unless IMAGINE_REQUIRE_POSTGRES=1 (CI sets it): then they fail.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from bot.config import Settings, load_settings
from tests.fakes.image_api import FakeImageApi

TEST_API_KEY = "sk-test-0123456789abcdef-never-logged"

# Every variable the settings read: tests must not see a developer's or CI machine's values.
SETTINGS_ENV = [name.upper() for name in Settings.model_fields]


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # so a stray .env in the repo is never read


@pytest.fixture
def fake_api() -> Iterator[FakeImageApi]:
    with FakeImageApi(api_key=TEST_API_KEY) as fake:
        yield fake


POSTGRES_URL = os.environ.get("IMAGINE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("IMAGINE_REQUIRE_POSTGRES") == "1"
_postgres_checked: list[str | None] = []  # [None] reachable, [reason] not; empty: not asked yet


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `both_backends` run once on SQLite and once on PostgreSQL."""
    marked = metafunc.definition.get_closest_marker("both_backends")
    if "backend" in metafunc.fixturenames and marked and not metafunc.definition.get_closest_marker("sqlite_only"):
        metafunc.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a reachable server (and outside CI) the PostgreSQL runs are left out, said once."""
    on_postgres = [
        i for i in items if getattr(i, "callspec", None) and i.callspec.params.get("backend") == "postgresql"
    ]
    if not on_postgres or REQUIRE_POSTGRES:
        return
    reason = asyncio.run(_postgres_unreachable())
    if reason:
        config.hook.pytest_deselected(items=on_postgres)
        items[:] = [i for i in items if i not in set(on_postgres)]
        config.stash[_SKIPPED_POSTGRES] = f"{len(on_postgres)} PostgreSQL test run(s) skipped: {reason}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if line := config.stash.get(_SKIPPED_POSTGRES, None):
        terminalreporter.write_line(line, yellow=True)


_SKIPPED_POSTGRES = pytest.StashKey[str]()


async def _postgres_unreachable() -> str | None:
    if not _postgres_checked:
        try:
            connection = await asyncio.wait_for(asyncpg.connect(POSTGRES_URL), 5)
            await connection.close()
            _postgres_checked.append(None)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            _postgres_checked.append(f"PostgreSQL is not reachable at {POSTGRES_URL} ({type(exc).__name__})")
    return _postgres_checked[0]


@pytest.fixture
async def backend(request: pytest.FixtureRequest) -> str:
    """ "sqlite" (the default), or "postgresql" for the second run of a `both_backends` test."""
    name = getattr(request, "param", "sqlite")
    if name == "postgresql" and (reason := await _postgres_unreachable()):
        if REQUIRE_POSTGRES:
            pytest.fail(reason + "; IMAGINE_REQUIRE_POSTGRES=1")
        pytest.skip(reason)
    return name


@pytest.fixture
async def database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database: a SQLite file in tmp, or a PostgreSQL schema of the test's own (dropped
    afterwards), so tests can run side by side and leave nothing behind."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'imagine.db'}"
        return
    schema = f"imagine_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in POSTGRES_URL else "?"
        yield f"{POSTGRES_URL}{separator}search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


@pytest.fixture
def make_settings(tmp_path: Path, fake_api: FakeImageApi, database_url: str) -> Callable[..., Settings]:
    """Settings pointing at the fake and a fresh database; keyword arguments override."""

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "nebula_api_key": TEST_API_KEY,
            "nebula_base_url": fake_api.base_url,
            "database_url": database_url,
            "cache_dir": tmp_path / "cache",
            "_env_file": None,
        }
        values.update(overrides)
        return load_settings(**values)

    return build


def env_for(settings_values: dict[str, str]) -> dict[str, str]:
    """A subprocess environment: the current one minus our settings, plus these values."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    env.update(settings_values)
    return env
