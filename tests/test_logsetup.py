"""The log handler configure_logging installs: secrets scrubbed from what it writes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.logsetup import configure_logging
from bot.storage.db import SqliteStore

API_KEY = "sk-live-0123456789abcdef"
INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDpzZWNyZXQ"


class Output:
    """What configure_logging's handler wrote to stderr (captured by pytest)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self._text = ""

    def getvalue(self) -> str:
        self._text += self._capsys.readouterr().err
        return self._text


@pytest.fixture
def output(capsys: pytest.CaptureFixture[str]) -> Iterator[Output]:
    """configure_logging's stderr; the root logger's handlers and level restored after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield Output(capsys)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


async def test_at_debug_the_stores_statements_never_show_an_interaction_token(output: Output, tmp_path: Path) -> None:
    """aiosqlite logs every statement with its parameters at DEBUG: the job row's interaction
    token (a credential for the user's reply) with them. LOG_LEVEL=DEBUG must not print it."""
    configure_logging("DEBUG", [API_KEY])
    store = await SqliteStore.open(tmp_path / "imagine.db")
    try:
        await store.write("INSERT INTO meta (key, value) VALUES (?, ?)", ("reply", INTERACTION_TOKEN))
        assert await store.get_meta("reply") == INTERACTION_TOKEN
    finally:
        await store.close()
    logging.getLogger("imagine.test").debug("the bot's own DEBUG lines stay")
    assert "the bot's own DEBUG lines stay" in output.getvalue()
    assert INTERACTION_TOKEN not in output.getvalue()
