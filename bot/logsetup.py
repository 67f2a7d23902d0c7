"""Logging for the whole process, with secrets scrubbed from every record.

Our code never logs a secret on purpose; this filter makes sure a library (or a future slip)
cannot either: the API key, the bot token and interaction tokens inside webhook/callback
URLs are replaced before any handler writes the line, in the message, the traceback and every
field passed with `extra=`.

Two formats (LOG_FORMAT): `text`, one readable line per event (the default), and `json`, one
JSON object per line for log shippers, with the structured fields of bot/log_fields.py.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from bot.log_fields import STRUCTURED_FIELDS

_URL_TOKENS = re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_.\-]{20,}")
_BEARER = re.compile(r"((?:Bearer|Bot)\s+)[A-Za-z0-9_.\-]{8,}")
# a token as a key/value in a logged payload, e.g. discord.py's DEBUG dump of a gateway event
_TOKEN_FIELDS = re.compile(r"""(['"](?:token|interaction_token)['"]\s*:\s*['"])[^'"]{8,}""")


class SecretScrubber(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s and len(s) >= 6]

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 6 and secret not in self._secrets:
            self._secrets.append(secret)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = _URL_TOKENS.sub(r"\1***", text)
        text = _TOKEN_FIELDS.sub(r"\1***", text)
        return _BEARER.sub(r"\1***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = self.scrub(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        for name, value in list(vars(record).items()):  # the fields passed with extra=
            if name not in _RECORD_ATTRIBUTES and isinstance(value, str):
                setattr(record, name, self.scrub(value))
        return True


#: what every LogRecord has; anything else on a record came from `extra=`
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the structured fields the record
    carries (bot/log_fields.py) and, for an exception, its traceback as one string field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in STRUCTURED_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text  # newlines escaped by JSON: still one line
        if record.stack_info:
            entry["stack"] = record.stack_info
        # ensure_ascii: no raw U+2028 or other separators a line-based shipper might split on
        return json.dumps(entry, default=str, ensure_ascii=True)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def make_formatter(log_format: str) -> logging.Formatter:
    """LOG_FORMAT: "text" (the default) or "json"."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {log_format!r}: use text or json")


def configure_logging(level: str = "INFO", secrets: Iterable[str] = (), log_format: str = "text") -> SecretScrubber:
    """Log to stderr with the scrubber on the handler, so records from every logger pass it."""
    scrubber = SecretScrubber(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    handler.addFilter(scrubber)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request is noise
    # At DEBUG discord.py dumps every gateway event, and aiosqlite every statement with its
    # parameters, interaction tokens included (a job row holds one): neither below INFO.
    for chatty in ("discord.gateway", "aiosqlite"):
        logging.getLogger(chatty).setLevel(max(root.level, logging.INFO))
    return scrubber
