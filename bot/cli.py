"""`imagine-bot` (and `python -m bot`): run the bot, generate from the terminal, read the ledger,
check an installation (`doctor`, bot/doctor/).

Exit codes of `generate`: 0 ok, 2 invalid input (nothing sent), 3 refused by the provider
(400/401/403/content), 4 failed after retries (429/5xx/network/malformed), 1 anything else
(decided in `bot.cli_outcome`).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bot import __version__
from bot.config import Settings, load_settings
from bot.errors import ConfigError
from bot.logsetup import configure_logging
from bot.money import fen_to_cny, format_cny
from bot.presets import SIZES, STYLES
from bot.storage.reports import UsageRow

log = logging.getLogger("imagine.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagine-bot", description="Slash commands in, images out.")
    parser.add_argument("--version", action="version", version=f"imagine-bot {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    commands.add_parser("run", help="start the Discord bot (the default)")
    commands.add_parser("sync", help="push the slash command definitions to Discord now (globally)")

    generate = commands.add_parser("generate", help="generate one image from the terminal")
    generate.add_argument("prompt", help="what to draw (quote it)")
    generate.add_argument("--style", choices=list(STYLES), help="a named scenario (default: rapid)")
    generate.add_argument("--size", help="WIDTH*HEIGHT: " + ", ".join(s.value for s in SIZES))
    generate.add_argument("--negative", metavar="TEXT", help="what to keep out of the image")
    generate.add_argument("--no-extend", action="store_true", help="do not let the provider rewrite the prompt")
    generate.add_argument("--no-watermark", action="store_true", help="ask for no provider watermark")
    generate.add_argument("-o", "--output", type=Path, help="file to write (default: imagine-<job id>.<ext>)")

    usage = commands.add_parser("usage", help="summarise images, cost and failures from the store")
    usage.add_argument("--since", metavar="DATE", help="only jobs queued on or after this date (YYYY-MM-DD, UTC)")
    usage.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    usage.add_argument("--guild", type=int, metavar="ID", help="only this server's jobs, broken down by user")

    cache = commands.add_parser("cache", help="the result cache: stats, prune (expired and over the cap), clear")
    cache.add_argument("action", choices=["stats", "prune", "clear"])

    doctor = commands.add_parser(
        "doctor",
        help="check settings, store, image API key (free), Discord token and permissions; exit 0 when all is well",
        description="Checks the settings, the store (opens, migrates, writes), the cache directory, that the"
        " gateway answers and accepts NEBULA_API_KEY (free: a request with an invalid size, refused with 400"
        " before any charge; a bad key gets 401), that DISCORD_TOKEN logs in, and the bot's permissions in"
        " each server. One line per check (OK, FAIL with how to fix it, WARN, SKIP), then a summary."
        " Exit code 0 when nothing failed, 1 otherwise.",
    )
    doctor.add_argument(
        "--paid",
        action="store_true",
        help="also make one real image end to end (charged, e.g. ¥0.18, and recorded in the ledger as 'doctor')",
    )

    limits = commands.add_parser("limits", help="show a server's effective limits, budgets and moderation settings")
    limits.add_argument("--guild", type=int, metavar="ID", required=True, help="the server (guild) id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    if command == "doctor":  # loads the settings itself: an invalid one is a finding, not a stop
        return _doctor(args)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"imagine-bot: {exc.message}", file=sys.stderr)
        return 2
    secrets = [s.get_secret_value() for s in (settings.nebula_api_key, settings.discord_token) if s is not None]
    configure_logging(
        settings.log_level if command in ("run", "sync") else "WARNING", secrets, log_format=settings.log_format
    )
    try:
        if command == "run":
            from bot.app import serve

            return asyncio.run(serve(settings))
        if command == "sync":
            from bot.app import force_sync

            return asyncio.run(force_sync(settings))
        if command == "generate":
            return asyncio.run(_generate(settings, args))
        if command == "usage":
            return asyncio.run(_usage(settings, args))
        if command == "limits":
            return asyncio.run(_limits(settings, args))
        if command == "cache":
            return asyncio.run(_cache(settings, args))
    except ConfigError as exc:
        print(f"imagine-bot: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {command}")


def _doctor(args: argparse.Namespace) -> int:
    from bot.doctor import run_doctor  # keeps `--help` and `usage` light

    configure_logging("WARNING")  # until the settings name the secrets to scrub (run_doctor adds them)
    try:
        return asyncio.run(run_doctor(paid=args.paid))
    except KeyboardInterrupt:
        return 130


async def _generate(settings: Settings, args: argparse.Namespace) -> int:
    from bot.cli_generate import generate_once  # keeps `--help` and `usage` light

    return await generate_once(settings, args)


async def _usage(settings: Settings, args: argparse.Namespace) -> int:
    from bot.storage.connect import open_store
    from bot.storage.reports import usage_summary

    if not settings.uses_postgres and not settings.database_path.exists():
        print(f"No database yet at {settings.database_path}: nothing has been generated.")
        return 0
    store = await open_store(settings.database_url)
    try:
        summary = await usage_summary(store, since=args.since, guild_id=args.guild)
    finally:
        await store.close()
    who = "user" if args.guild is not None else "requester"
    sections = [("total", [summary.total]), ("day", summary.by_day), (who, summary.by_requester)]
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["section", "key", "images", "failures", "cost_cny", "upstream_cny"])
        for name, rows in sections:
            for row in rows:
                writer.writerow(
                    [
                        name,
                        row.key,
                        row.images,
                        row.failures,
                        fen_to_cny(row.cost_fen),
                        fen_to_cny(row.upstream_fen),
                    ]
                )
        return 0
    for name, rows in sections:
        print(_table(name, rows))
    return 0


async def _cache(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import timedelta

    from bot.cache import ResultCache
    from bot.storage.connect import open_store
    from bot.storage.db import utc_now
    from bot.storage.images import ImageStore

    store = await open_store(settings.database_url)
    try:
        cache = ResultCache(
            store,
            ImageStore(settings.cache_dir),
            ttl=timedelta(hours=settings.cache_ttl_hours),
            max_bytes=settings.cache_max_mb * 1024 * 1024,
            utcnow=utc_now,
        )
        if args.action == "prune":
            print(f"pruned {await cache.prune()} entr(y/ies): expired, or past CACHE_MAX_MB")
        elif args.action == "clear":
            print(f"cleared {await cache.clear()} entr(y/ies)")
        stats = await cache.stats()
    finally:
        await store.close()
    print(f"entries: {stats.entries}")
    print(f"size:    {stats.bytes / 1024 / 1024:.1f} MiB of {settings.cache_max_mb} MiB")
    print(f"ttl:     {settings.cache_ttl_hours:g} h (oldest {stats.oldest or '-'}, newest {stats.newest or '-'})")
    saved = format_cny(stats.hits * settings.price_per_image_fen)
    print(f"hits:    {stats.hits} image(s) delivered from the cache, {saved} saved")
    return 0


async def _limits(settings: Settings, args: argparse.Namespace) -> int:
    from bot.gatekeeper import Gatekeeper
    from bot.storage.connect import open_store
    from bot.storage.guilds import GuildStore

    store = await open_store(settings.database_url)
    try:
        guilds = GuildStore(store)
        policy = await Gatekeeper(settings, guilds).policy(args.guild)
        rules, blocks = await guilds.rules(args.guild), await guilds.blocks(args.guild)
    finally:
        await store.close()

    def n(value: int | None) -> str:
        return "unlimited" if value is None else str(value)

    def cny(fen: int | None) -> str:
        return "unlimited" if fen is None else format_cny(fen)

    lines = [
        f"guild {args.guild}",
        f"  images per user:   {n(policy.user_daily_limit)} a day, {n(policy.user_monthly_limit)} a month",
        f"  cooldown:          {policy.cooldown_s} s",
        f"  budget:            {cny(policy.daily_budget_fen)} a day, {cny(policy.monthly_budget_fen)} a month",
        f"  time zone:         {policy.timezone} (days and months roll over at its midnight)",
    ]
    for role, limit in sorted(policy.role_limits.items()):
        lines.append(f"  role {role}: {n(limit.daily)} a day, {n(limit.monthly)} a month")
    channels = ", ".join(str(c) for c in sorted(policy.allowed_channels)) or "every channel"
    lines += [
        f"  allowed channels:  {channels}",
        f"  moderation log:    {policy.log_channel_id or 'off'}",
        f"  cache:             {'on' if policy.cache_enabled else 'off'}"
        f"{', hits count toward limits' if policy.cache_counts_toward_limits else ''}",
        f"  prompt rules:      {len(rules)}",
    ]
    lines += [f"    #{r.id} {r.kind} {r.pattern!r}: {r.reason}" for r in rules]
    lines.append(f"  blocked users:     {len(blocks)}")
    lines += [f"    {b.user_id} until {b.expires_at or 'unblocked'}: {b.reason}" for b in blocks]
    print("\n".join(lines))
    return 0


def _table(title: str, rows: list[UsageRow]) -> str:
    label = title if title == "total" else f"by {title}"
    header = f"{label:<22}{'images':>8}{'failures':>10}{'cost ¥':>10}{'upstream ¥':>12}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.key:<22}{row.images:>8}{row.failures:>10}{fen_to_cny(row.cost_fen):>10}"
            f"{fen_to_cny(row.upstream_fen):>12}"
        )
    return "\n".join(lines) + "\n"
