"""The doctor's Discord checks, over REST only (no gateway connection, so a running bot is not
disturbed): the token logs in (GET /users/@me, as discord.py's `login` does), then the bot's
servers and its server-wide permissions in each (GET /users/@me/guilds) against what it needs
(bot/invite.py). DISCORD_API_BASE is honoured, as by the bot (a REST proxy, or a test's fake).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import discord

from bot.app import point_at_discord
from bot.config import Settings
from bot.doctor.report import Finding, fail, ok, printable, skip, warn
from bot.errors import ConfigError
from bot.invite import REQUIRED, invite_url, missing_permissions

LOGIN, SERVERS = "Discord login", "permissions"
#: Discord retries 5xx and honours 429s inside discord.py; the doctor does not wait longer than this
DISCORD_TIMEOUT_S = 20.0
#: Discord's page size for GET /users/@me/guilds
GUILDS_PAGE = 200
#: servers missing permissions are listed one a line up to this many, then counted
LISTED_AT_MOST = 20


async def check_discord(settings: Settings) -> list[Finding]:
    try:
        settings.require("DISCORD_TOKEN")
    except ConfigError as exc:
        return [fail(LOGIN, exc.message, "the bot cannot start without it."), skip(SERVERS, "no token to log in with")]
    assert settings.discord_token is not None
    point_at_discord(settings)
    base = discord.http.Route.BASE
    # the bot's own intents (no gateway connection is made: they only keep discord.py from warning)
    intents = discord.Intents.none()
    intents.guilds = True
    discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False  # no voice here: no warning about it
    client = discord.Client(intents=intents)
    try:
        async with asyncio.timeout(DISCORD_TIMEOUT_S), client:
            await client.login(settings.discord_token.get_secret_value())
            login = ok(LOGIN, f"logged in as {printable(str(client.user))} (user id {client.user and client.user.id})")
            application_id = client.application_id
            guilds = await _all_guilds(client.http)
    except discord.LoginFailure:
        return [
            fail(
                LOGIN,
                "Discord refused DISCORD_TOKEN (401 Unauthorized).",
                "Discord developer portal > your application > Bot > Reset Token, and put the new token in .env.",
            ),
            skip(SERVERS, "not logged in"),
        ]
    except discord.HTTPException as exc:
        return [
            fail(LOGIN, f"Discord answered {exc.status} at {base}: {printable(exc.text or str(exc))}.", _REACH_FIX),
            skip(SERVERS, "not logged in"),
        ]
    except (aiohttp.ClientError, OSError) as exc:
        detail = f"{type(exc).__name__}: {printable(str(exc))}"
        return [fail(LOGIN, f"could not reach Discord at {base} ({detail}).", _REACH_FIX), skip(SERVERS, "no answer")]
    except TimeoutError:
        return [
            fail(LOGIN, f"Discord at {base} did not answer within {DISCORD_TIMEOUT_S:g} s.", _REACH_FIX),
            skip(SERVERS, "no answer"),
        ]
    except Exception as exc:  # e.g. a DISCORD_API_BASE that answers 200 with something else than Discord's JSON
        detail = f"{type(exc).__name__}: {printable(str(exc))}"
        return [fail(LOGIN, f"unexpected answer from {base} ({detail}).", _REACH_FIX), skip(SERVERS, "not logged in")]
    assert application_id is not None  # login reads the application
    return [login, *permission_findings(guilds, application_id)]


_REACH_FIX = "check the network, and DISCORD_API_BASE if a REST proxy is set."


async def _all_guilds(http: discord.http.HTTPClient) -> list[dict[str, Any]]:
    guilds: list[dict[str, Any]] = []
    while True:
        after = int(guilds[-1]["id"]) if guilds else None
        page: list[dict[str, Any]] = await http.get_guilds(GUILDS_PAGE, after=after, with_counts=False)  # type: ignore[assignment]
        guilds += page
        if len(page) < GUILDS_PAGE:
            return guilds


def permission_findings(guilds: list[dict[str, Any]], application_id: int) -> list[Finding]:
    """One OK line for the servers where the bot has everything it needs, one FAIL line per server
    that misses something (naming what), a WARN with the invite link when it is in none."""
    url = invite_url(application_id)
    if not guilds:
        return [warn(SERVERS, "the bot is in no server yet, so nobody can use it.", f"invite it: {url}")]
    lacking = []
    for guild in guilds:
        granted = discord.Permissions(int(guild.get("permissions") or 0))
        if missing := missing_permissions(granted, owner=bool(guild.get("owner"))):
            lacking.append((guild, missing))
    findings = []
    if len(lacking) < len(guilds):
        findings.append(
            ok(
                SERVERS,
                f"{', '.join(REQUIRED.values())} in {len(guilds) - len(lacking)} of {len(guilds)} server(s)"
                " (server-wide: a channel's own overrides can still deny them there)",
            )
        )
    fix = f"give the bot's role these permissions (Server Settings > Roles), or invite it again: {url}"
    for guild, missing in lacking[:LISTED_AT_MOST]:
        name = printable(str(guild.get("name") or "?"), 60)
        findings.append(fail(SERVERS, f"in server '{name}' ({guild['id']}) missing {', '.join(missing)}.", fix))
    if len(lacking) > LISTED_AT_MOST:
        more = len(lacking) - LISTED_AT_MOST
        findings.append(fail(SERVERS, f"{more} more server(s) miss permissions too.", fix))
    return findings
