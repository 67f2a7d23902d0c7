"""`imagine-bot doctor`: is this installation ready to run? Settings, store, cache directory, the
image gateway and the API key (free), the Discord token and the bot's permissions in each server;
with `--paid`, one real generation. One line per check, a summary, exit code 0 only when nothing
failed (WARN lines do not fail it). See bot/doctor/report.py for the format.

The checks run one after the other, each bounded in time; a check that cannot run because an
earlier one failed says so (SKIP) instead of failing twice.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO
from urllib.parse import urlsplit

from bot.doctor.discord_checks import LOGIN, SERVERS, check_discord
from bot.doctor.local_checks import CACHE_DIR, STORE, check_cache_dir, check_settings, check_store
from bot.doctor.paid import PAID, paid_generation
from bot.doctor.report import Report, Status, skip
from bot.doctor.upstream_checks import KEY, REACHABLE, probe_gateway
from bot.logsetup import configure_logging
from bot.storage.connect import is_postgres


async def run_doctor(*, paid: bool = False, out: TextIO = sys.stdout) -> int:
    report = Report(out)
    spend = "--paid: one real image at the end" if paid else "nothing is paid (--paid makes one real image)"
    report.say(f"imagine-bot doctor: settings, store, image API, Discord; {spend}")
    found, settings = check_settings()
    report.add(found)
    if settings is None:
        later = [STORE, CACHE_DIR, REACHABLE, KEY, LOGIN, SERVERS] + ([PAID] if paid else [])
        report.add(*(skip(check, "the settings did not load") for check in later))
        return report.finish()

    secrets = [s.get_secret_value() for s in (settings.nebula_api_key, settings.discord_token) if s is not None]
    if is_postgres(settings.database_url) and (password := urlsplit(settings.database_url).password):
        secrets.append(password)
    for secret in secrets:
        report.scrubber.add(secret)
    configure_logging("WARNING", secrets)  # libraries' warnings on stderr, scrubbed too

    report.add(await check_store(settings))
    report.add(await asyncio.to_thread(check_cache_dir, settings))
    report.add(*await probe_gateway(settings))
    report.add(*await check_discord(settings))
    if paid:
        if report.status_of(STORE) is Status.OK and report.status_of(KEY) is Status.OK:
            report.add(await paid_generation(settings, report))
        else:
            report.add(skip(PAID, "no money is spent while the store or the API key check fails"))
    return report.finish()
