"""Logging for the whole process, with secrets scrubbed from every record.

Our code never logs a secret on purpose; this filter makes sure a library (or a future slip)
cannot either: the API key, the bot token and interaction tokens inside webhook/callback
URLs are replaced before any handler writes the line.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

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
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


def configure_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> SecretScrubber:
    """Log to stderr with the scrubber on the handler, so records from every logger pass it."""
    scrubber = SecretScrubber(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
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
