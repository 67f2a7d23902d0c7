"""How a failed `imagine-bot` command is reported: one line on stderr and the exit code.

Its own module so that `bot.cli` (the commands) and `bot.cli_generate` (the `generate` command,
imported lazily by `bot.cli`) both use it without importing each other.

Exit codes: 0 ok, 2 invalid input (nothing sent), 3 refused by the provider (400/401/403/content),
4 failed after retries (429/5xx/network/malformed), 1 anything else. Each error class carries its
own `exit_code` (bot/errors.py, bot/imaging/errors.py); an error that is not an ImagineError is 1.
"""

from __future__ import annotations

from bot import messages
from bot.errors import ImagineError


def describe_failure(error: BaseException) -> str:
    """One line a person understands, plus what the operator can quote to support."""
    line = messages.describe(error)
    detail = getattr(error, "message", None)
    request_id = getattr(error, "request_id", None)
    extras = [f"{type(error).__name__}: {detail}" if detail and detail not in line else type(error).__name__]
    if request_id:
        extras.append(f"request id {request_id}")
    hint = messages.operator_hint(error)
    if hint:
        extras.append(hint)
    return f"{line} ({'; '.join(extras)})"


def exit_code_for(error: BaseException) -> int:
    return error.exit_code if isinstance(error, ImagineError) else 1
