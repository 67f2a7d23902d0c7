"""The log handler configure_logging installs: text by default, JSON on request, secrets scrubbed
from every part of a record (message, extra fields, traceback) in both formats."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.logsetup import JsonFormatter, configure_logging
from bot.storage.db import SqliteStore

API_KEY = "sk-live-0123456789abcdef"
BOT_TOKEN = "MTAx.bot-token-never-shown.abcdefghijklmnop"
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


def lines(output: Output) -> list[str]:
    return output.getvalue().splitlines()


def test_text_is_the_default_format(output: Output) -> None:
    configure_logging("INFO")
    logging.getLogger("imagine.test").info("job %s delivered", 42, extra={"job_id": 42, "cost_fen": 18})
    [line] = lines(output)
    assert line.endswith("INFO    imagine.test: job 42 delivered")
    with pytest.raises(ValueError):
        json.loads(line)


def test_json_writes_one_object_per_line_with_the_structured_fields(output: Output) -> None:
    configure_logging("INFO", log_format="json")
    log = logging.getLogger("imagine.test")
    log.info(
        "job %s delivered",
        42,
        extra={"job_id": 42, "guild_id": 7, "user_id": 9, "state": "delivered", "latency_ms": 1234,
               "cost_fen": 18, "request_id": "req-1", "unrelated": "not a field"},
    )  # fmt: skip
    log.warning("no fields here")
    first, second = (json.loads(line) for line in lines(output))
    assert first.pop("ts").endswith("+00:00")
    assert first == {
        "level": "INFO",
        "logger": "imagine.test",
        "message": "job 42 delivered",
        "job_id": 42,
        "guild_id": 7,
        "user_id": 9,
        "state": "delivered",
        "latency_ms": 1234,
        "cost_fen": 18,
        "request_id": "req-1",
    }
    assert set(second) == {"ts", "level", "logger", "message"}


def test_an_exception_is_one_field_on_the_same_line(output: Output) -> None:
    configure_logging("INFO", log_format="json")
    try:
        raise RuntimeError("first line\nsecond line")
    except RuntimeError:
        logging.getLogger("imagine.test").exception("job %s failed unexpectedly", 5, extra={"job_id": 5})
    [line] = lines(output)
    entry = json.loads(line)
    assert entry["message"] == "job 5 failed unexpectedly"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("RuntimeError: first line\nsecond line")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_secret_never_appears_in_a_message_an_extra_field_or_a_traceback(output: Output, log_format: str) -> None:
    configure_logging("INFO", [API_KEY, BOT_TOKEN], log_format=log_format)
    log = logging.getLogger("imagine.test")
    log.info("key %s and token %s", API_KEY, BOT_TOKEN)
    log.warning("upstream error", extra={"request_id": f"req {API_KEY}", "state": f"Bot {BOT_TOKEN}"})
    log.info("posting to /webhooks/1234/%s/messages", INTERACTION_TOKEN)
    try:
        raise ValueError(f"Authorization: Bearer {API_KEY}")
    except ValueError:
        log.exception("call failed", extra={"job_id": 1})
    text = output.getvalue()
    assert len(lines(output)) >= 4
    for secret in (API_KEY, BOT_TOKEN, INTERACTION_TOKEN):
        assert secret not in text
    if log_format == "json":
        entries = [json.loads(line) for line in lines(output)]
        assert entries[1]["request_id"] == "req ***" and entries[1]["state"] == "Bot ***"
        assert entries[2]["message"] == "posting to /webhooks/1234/***/messages"
        assert "Bearer ***" in entries[3]["exception"]


def test_the_json_formatter_alone_survives_values_json_cannot_encode() -> None:
    record = logging.LogRecord("imagine.test", logging.INFO, __file__, 1, "odd", None, None)
    record.state = {"set"}  # type: ignore[attr-defined]
    assert json.loads(JsonFormatter().format(record))["state"] == "{'set'}"


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_at_debug_the_stores_statements_never_show_an_interaction_token(
    output: Output, tmp_path: Path, log_format: str
) -> None:
    """aiosqlite logs every statement with its parameters at DEBUG: the job row's interaction
    token (a credential for the user's reply) with them. LOG_LEVEL=DEBUG must not print it."""
    configure_logging("DEBUG", [API_KEY], log_format=log_format)
    store = await SqliteStore.open(tmp_path / "imagine.db")
    try:
        await store.write("INSERT INTO meta (key, value) VALUES (?, ?)", ("reply", INTERACTION_TOKEN))
        assert await store.get_meta("reply") == INTERACTION_TOKEN
    finally:
        await store.close()
    logging.getLogger("imagine.test").debug("the bot's own DEBUG lines stay")
    assert "the bot's own DEBUG lines stay" in output.getvalue()
    assert INTERACTION_TOKEN not in output.getvalue()
