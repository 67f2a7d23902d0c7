"""What `imagine-bot doctor` prints: one line per finding (OK, FAIL with its fix, WARN, SKIP with
why), then a summary; the exit code is 0 only when nothing failed.

Every line passes the secret scrubber on its way out (the API key, the bot token, the database
password): the checks never put a secret in a line, and this makes sure a library's error text
cannot either.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import TextIO

from bot.logsetup import SecretScrubber


class Status(StrEnum):
    OK = "OK"
    FAIL = "FAIL"  # something is wrong: the line says what and how to fix it
    WARN = "WARN"  # worth knowing, but the bot works
    SKIP = "SKIP"  # not checked: the line says why


@dataclass(frozen=True, slots=True)
class Finding:
    status: Status
    check: str
    detail: str
    fix: str | None = None

    def line(self) -> str:
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{self.status.value:<5} {self.check}: {self.detail}{fix}"


def ok(check: str, detail: str) -> Finding:
    return Finding(Status.OK, check, detail)


def fail(check: str, detail: str, fix: str | None) -> Finding:
    return Finding(Status.FAIL, check, detail, fix)


def warn(check: str, detail: str, fix: str | None = None) -> Finding:
    return Finding(Status.WARN, check, detail, fix)


def skip(check: str, why: str) -> Finding:
    return Finding(Status.SKIP, check, why)


def printable(text: str, limit: int = 100) -> str:
    """Text from elsewhere (a server's name, an error message) on one plain line: no terminal
    escapes or line breaks, bounded."""
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return text[:limit] + ("…" if len(text) > limit else "")


class Report:
    def __init__(self, out: TextIO = sys.stdout, scrubber: SecretScrubber | None = None) -> None:
        self._out = out
        self.scrubber = scrubber or SecretScrubber()
        self.findings: list[Finding] = []

    def say(self, text: str) -> None:
        """A line that is not a finding (the header, the PAID announcement), printed at once."""
        print(self.scrubber.scrub(text), file=self._out, flush=True)

    def add(self, *findings: Finding) -> None:
        for finding in findings:
            self.findings.append(finding)
            self.say(finding.line())

    def status_of(self, check: str) -> Status | None:
        return next((f.status for f in self.findings if f.check == check), None)

    @property
    def failed(self) -> bool:
        return any(f.status is Status.FAIL for f in self.findings)

    def finish(self) -> int:
        """Print the summary; the exit code: 0 when nothing failed, 1 otherwise."""
        counts = ", ".join(f"{sum(f.status is s for f in self.findings)} {s.value}" for s in Status)
        verdict = "fix the FAIL lines above, then run imagine-bot doctor again" if self.failed else "all is well"
        self.say(f"summary: {counts}: {verdict}")
        return 1 if self.failed else 0
