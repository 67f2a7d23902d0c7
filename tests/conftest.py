"""Shared fixtures: the loopback fake image API, isolated settings, a real SQLite file in tmp."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

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


@pytest.fixture
def make_settings(tmp_path: Path, fake_api: FakeImageApi) -> Callable[..., Settings]:
    """Settings pointing at the fake and a temp database; keyword arguments override."""

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "nebula_api_key": TEST_API_KEY,
            "nebula_base_url": fake_api.base_url,
            "database_url": f"sqlite:///{tmp_path / 'imagine.db'}",
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
