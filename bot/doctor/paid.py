"""`imagine-bot doctor --paid`: one real generation, end to end, charged and recorded.

The same path as `imagine-bot generate` (the store, the shared upstream budget, the download
checks, the ledger), under requester `doctor`, so `imagine-bot usage` shows what the check cost.
The result cache is bypassed: a cache hit would prove nothing about the provider.
"""

from __future__ import annotations

import time

from bot.cli_generate import failure_of, generate_to_file
from bot.cli_outcome import describe_failure
from bot.config import Settings
from bot.contracts import Requester
from bot.doctor.report import Finding, Report, fail, ok
from bot.errors import ImagineError
from bot.messages import operator_hint
from bot.money import format_cny
from bot.presets import size_label
from bot.requests import RequestBuilder

PAID = "paid generation"
REQUESTER = "doctor"
PAID_PROMPT = "A small orange kitten sitting on a wooden table, soft daylight"


def announcement(settings: Settings) -> str:
    price = format_cny(settings.price_per_image_fen)
    return (
        f"PAID  {PAID}: one real image now, costs {price}, recorded in the ledger as requester '{REQUESTER}'"
        " (imagine-bot usage lists it)"
    )


async def paid_generation(settings: Settings, report: Report) -> Finding:
    report.say(announcement(settings))  # before any money is spent
    uncached = settings.model_copy(update={"cache_ttl_hours": 0.0})
    try:
        request = RequestBuilder(uncached).imagine(PAID_PROMPT, prompt_extend=False, command=REQUESTER)
    except ImagineError as exc:  # a PROMPT_MAX_CHARS shorter than the check's prompt
        return fail(PAID, f"the check's own request is invalid here: {exc.message}", "check PROMPT_MAX_CHARS.")
    started = time.monotonic()
    try:
        job, delivery = await generate_to_file(uncached, request, Requester(REQUESTER), name_prefix="imagine-doctor")
    except Exception as exc:  # the pipeline could not run the job at all (nothing was sent)
        return fail(PAID, describe_failure(exc), "fix the FAIL lines above first.")
    if (error := failure_of(job, delivery)) is not None:
        hint = operator_hint(error)
        return fail(PAID, describe_failure(error), hint or "run imagine-bot doctor (without --paid) for the cause.")
    return ok(
        PAID,
        f"wrote {delivery.written} ({size_label(job.size)}, {delivery.written_bytes:,} bytes) in"
        f" {time.monotonic() - started:.1f} s; charged {format_cny(job.cost_fen)}; request id {job.request_id or '-'};"
        f" job id {job.id}",
    )
