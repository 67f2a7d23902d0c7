"""`imagine-bot doctor` as a subprocess, against the loopback fake image API, the fake Discord (over
REST: DISCORD_API_BASE) and a real store (a SQLite file in tmp; PostgreSQL too where marked)."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import discord
import pytest

from bot.doctor.local_checks import CHECKED_AT_KEY
from bot.doctor.report import Status
from bot.doctor.upstream_checks import probe_gateway
from bot.invite import REQUIRED_PERMISSIONS, invite_url
from bot.storage.connect import open_store
from tests.conftest import TEST_API_KEY, env_for
from tests.fakes.fake_discord import FakeDiscord, FakeGuild
from tests.fakes.image_api import DEFAULT_SIZES, FakeImageApi, Reply

BAD_KEY = "sk-test-not-the-key-0123456789"


@pytest.fixture
def discord_api() -> Iterator[FakeDiscord]:
    with FakeDiscord() as fake:
        yield fake


def doctor(
    tmp_path: Path,
    api: FakeImageApi,
    discord_api: FakeDiscord,
    *args: str,
    database_url: str | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    values = {
        "DATABASE_URL": database_url or f"sqlite:///{tmp_path / 'imagine.db'}",
        "CACHE_DIR": str(tmp_path / "cache"),
        "NEBULA_API_KEY": TEST_API_KEY,
        "NEBULA_BASE_URL": api.base_url,
        "DISCORD_TOKEN": discord_api.bot_token,
        "DISCORD_API_BASE": discord_api.api_base,
        **env,
    }
    result = subprocess.run(
        [sys.executable, "-m", "bot", "doctor", *args],
        cwd=tmp_path,
        env=env_for(values),
        capture_output=True,
        text=True,
        timeout=60,  # generous: every check is bounded well below this
        stdin=subprocess.DEVNULL,
    )
    for secret in (TEST_API_KEY, BAD_KEY, discord_api.bot_token):
        assert secret not in result.stdout + result.stderr
    return result


def line(result: subprocess.CompletedProcess[str], status: str, check: str) -> str:
    """The one line of this check with this status (fails the test if there is not exactly one)."""
    found = [text for text in result.stdout.splitlines() if text.startswith(f"{status:<5} {check}:")]
    assert len(found) == 1, f"no single {status} {check!r} line in:\n{result.stdout}\n{result.stderr}"
    return found[0]


def ledger(tmp_path: Path) -> list[sqlite3.Row]:
    if not (tmp_path / "imagine.db").exists():
        return []
    with sqlite3.connect(tmp_path / "imagine.db") as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT * FROM jobs ORDER BY id").fetchall()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.both_backends
async def test_all_is_well_exits_0_and_nothing_is_generated(
    tmp_path: Path, fake_api: FakeImageApi, discord_api: FakeDiscord, database_url: str, backend: str
) -> None:
    result = doctor(tmp_path, fake_api, discord_api, database_url=database_url)
    assert result.returncode == 0, result.stdout + result.stderr
    engine = "SQLite" if backend == "sqlite" else "PostgreSQL 127.0.0.1:5432/test"
    assert engine in line(result, "OK", "store")
    for check in ("settings", "cache dir", "image API reachable", "Discord login"):
        line(result, "OK", check)
    assert "the free probe (size 0*0) got the documented 400, nothing charged" in line(result, "OK", "API key")
    assert "in 1 of 1 server(s)" in line(result, "OK", "permissions")
    assert result.stdout.splitlines()[-1].startswith("summary: 7 OK, 0 FAIL, 0 WARN, 0 SKIP: all is well")

    [probe] = fake_api.requests
    assert (probe.status, probe.json["parameters"]["size"]) == (400, "0*0")
    assert fake_api.generation_count == 0
    assert discord_api.identify_count == 0  # REST only: a running bot's gateway session is left alone
    assert {r.path for r in discord_api.requests} >= {"/users/@me", "/users/@me/guilds"}
    store = await open_store(database_url)
    try:
        assert await store.get_meta(CHECKED_AT_KEY) is not None  # the store took the doctor's write
    finally:
        await store.close()


def test_the_free_probe_charges_nothing(tmp_path: Path, fake_api: FakeImageApi, discord_api: FakeDiscord) -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "bot", "generate", "A cute orange kitten"],
        cwd=tmp_path,
        env=env_for(
            {
                "DATABASE_URL": f"sqlite:///{tmp_path / 'imagine.db'}",
                "CACHE_DIR": str(tmp_path / "cache"),
                "NEBULA_API_KEY": TEST_API_KEY,
                "NEBULA_BASE_URL": fake_api.base_url,
            }
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert generated.returncode == 0, generated.stderr
    before = [(r["id"], r["cost_fen"], r["upstream_fen"]) for r in ledger(tmp_path)]
    assert sum(cost for _, cost, _ in before) == 18 and fake_api.generation_count == 1

    result = doctor(tmp_path, fake_api, discord_api)
    assert result.returncode == 0, result.stdout
    assert [(r["id"], r["cost_fen"], r["upstream_fen"]) for r in ledger(tmp_path)] == before
    assert fake_api.generation_count == 1  # the fake made no image for the probe
    assert fake_api.requests[-1].status == 400


def test_a_bad_key_fails_with_the_fix_and_paid_spends_nothing(
    tmp_path: Path, fake_api: FakeImageApi, discord_api: FakeDiscord
) -> None:
    result = doctor(tmp_path, fake_api, discord_api, "--paid", NEBULA_API_KEY=BAD_KEY)
    assert result.returncode == 1
    failed = line(result, "FAIL", "API key")
    assert "refused by the gateway (401: Invalid API key)" in failed
    assert "Fix: NEBULA_API_KEY is invalid or expired: put a valid key in .env" in failed
    line(result, "OK", "image API reachable")  # it answered: only the key is wrong
    assert "no money is spent" in line(result, "SKIP", "paid generation")
    assert "PAID" not in result.stdout
    assert fake_api.generation_count == 0 and len(fake_api.requests) == 1
    assert ledger(tmp_path) == []


def test_an_unreachable_gateway_fails_at_once_naming_the_url(
    tmp_path: Path, fake_api: FakeImageApi, discord_api: FakeDiscord
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    result = doctor(tmp_path, fake_api, discord_api, NEBULA_BASE_URL=url)  # the 60 s run timeout is the bound
    assert result.returncode == 1
    failed = line(result, "FAIL", "image API reachable")
    assert f"no answer from {url}/images/generations" in failed and "ConnectError" in failed
    assert "Fix: check NEBULA_BASE_URL" in failed
    assert "the gateway did not answer" in line(result, "SKIP", "API key")
    line(result, "OK", "Discord login")  # the other checks still ran


def test_a_bad_discord_token_fails(tmp_path: Path, fake_api: FakeImageApi, discord_api: FakeDiscord) -> None:
    result = doctor(tmp_path, fake_api, discord_api, DISCORD_TOKEN="not-the-bot-token")
    assert result.returncode == 1
    failed = line(result, "FAIL", "Discord login")
    assert "Discord refused DISCORD_TOKEN (401 Unauthorized)" in failed and "Reset Token" in failed
    assert "not logged in" in line(result, "SKIP", "permissions")
    assert "not-the-bot-token" not in result.stdout + result.stderr
    assert discord_api.identify_count == 0


def test_a_server_missing_a_permission_fails_naming_it(
    tmp_path: Path, fake_api: FakeImageApi, discord_api: FakeDiscord
) -> None:
    without_files = discord.Permissions(REQUIRED_PERMISSIONS.value)
    without_files.attach_files = False
    art = discord_api.add_guild(FakeGuild(name="Art Club", bot_permissions=str(without_files.value)))
    result = doctor(tmp_path, fake_api, discord_api)
    assert result.returncode == 1
    failed = line(result, "FAIL", "permissions")
    assert f"in server 'Art Club' ({art.id}) missing Attach Files." in failed
    assert invite_url(discord_api.application_id) in failed
    assert f"permissions={REQUIRED_PERMISSIONS.value}" in failed
    assert "in 1 of 2 server(s)" in line(result, "OK", "permissions")


def test_an_owner_or_administrator_has_every_permission(
    tmp_path: Path, fake_api: FakeImageApi, discord_api: FakeDiscord
) -> None:
    discord_api.add_guild(FakeGuild(owner_id=discord_api.bot_user_id, bot_permissions="0"))
    discord_api.add_guild(FakeGuild(bot_permissions=str(discord.Permissions(administrator=True).value)))
    result = doctor(tmp_path, fake_api, discord_api)
    assert result.returncode == 0, result.stdout
    assert "in 3 of 3 server(s)" in line(result, "OK", "permissions")


def test_in_no_server_it_warns_with_the_invite_link(tmp_path: Path, fake_api: FakeImageApi) -> None:
    with FakeDiscord(guilds=[]) as lonely:
        result = doctor(tmp_path, fake_api, lonely)
    assert result.returncode == 0, result.stdout  # a warning: the bot itself works
    warned = line(result, "WARN", "permissions")
    assert "the bot is in no server yet" in warned and invite_url(lonely.application_id) in warned


def test_paid_makes_exactly_one_charged_generation_each_time(
    tmp_path: Path, fake_api: FakeImageApi, discord_api: FakeDiscord
) -> None:
    for run in (1, 2):  # the second is not a cache hit: the check always reaches the provider
        result = doctor(tmp_path, fake_api, discord_api, "--paid")
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        announced = next(i for i, text in enumerate(lines) if text.startswith("PAID  paid generation"))
        assert "costs ¥0.18" in lines[announced] and "requester 'doctor'" in lines[announced]
        paid = line(result, "OK", "paid generation")
        assert lines.index(paid) > announced  # labelled before it ran
        assert "charged ¥0.18" in paid
        assert fake_api.generation_count == run

    rows = ledger(tmp_path)
    assert [(r["requester"], r["command"], r["state"], r["cost_fen"], r["upstream_fen"]) for r in rows] == [
        ("doctor", "doctor", "delivered", 18, 18)
    ] * 2
    assert all((tmp_path / f"imagine-doctor-{r['id']}.png").is_file() for r in rows)
    assert [r.status for r in fake_api.requests] == [400, 200, 400, 200]  # each run: the free probe, one image


def test_invalid_settings_are_a_finding_and_nothing_is_sent(
    tmp_path: Path, fake_api: FakeImageApi, discord_api: FakeDiscord
) -> None:
    result = doctor(tmp_path, fake_api, discord_api, UPSTREAM_RPM="0")
    assert result.returncode == 1
    assert "UPSTREAM_RPM is invalid" in line(result, "FAIL", "settings")
    for check in ("store", "cache dir", "image API reachable", "API key", "Discord login", "permissions"):
        assert "the settings did not load" in line(result, "SKIP", check)
    assert fake_api.requests == [] and discord_api.requests == []


def test_an_unreachable_postgresql_fails_without_showing_its_password(
    tmp_path: Path, fake_api: FakeImageApi, discord_api: FakeDiscord
) -> None:
    port = closed_port()
    url = f"postgresql://imagine:pg-secret-password@127.0.0.1:{port}/imagine"
    result = doctor(tmp_path, fake_api, discord_api, database_url=url)
    assert result.returncode == 1
    failed = line(result, "FAIL", "store")
    assert f"PostgreSQL 127.0.0.1:{port}/imagine could not be opened or written" in failed
    assert "Fix: check DATABASE_URL" in failed
    assert "pg-secret-password" not in result.stdout + result.stderr
    line(result, "OK", "API key")  # the other checks still ran


@pytest.mark.parametrize("where", ["closed port", "not Discord"])
def test_discord_unreachable_or_not_discord_fails_naming_the_base(
    tmp_path: Path, fake_api: FakeImageApi, discord_api: FakeDiscord, where: str
) -> None:
    base = f"http://127.0.0.1:{closed_port()}/api/v10" if where == "closed port" else fake_api.url + "/api/v10"
    result = doctor(tmp_path, fake_api, discord_api, DISCORD_API_BASE=base)
    assert result.returncode == 1
    failed = line(result, "FAIL", "Discord login")
    expected = "could not reach Discord at" if where == "closed port" else "Discord answered 404 at"
    assert f"{expected} {base}" in failed and "DISCORD_API_BASE" in failed
    line(result, "SKIP", "permissions")


# -- how the free probe's answer is read (in-process: a gateway that takes 0*0 as a size plays any reply) --
@pytest.fixture
def lax_gateway() -> Iterator[FakeImageApi]:
    """A gateway that does not refuse the invalid size, so the probe meets whatever it is scripted to say."""
    with FakeImageApi(api_key=TEST_API_KEY, sizes=(*DEFAULT_SIZES, "0*0")) as fake:
        yield fake


@pytest.mark.parametrize(
    ("reply", "check", "status", "text"),
    [
        (Reply.error(403), "API key", Status.FAIL, "refused for permission or balance (403"),
        (Reply.error(429), "API key", Status.FAIL, "not verified: the gateway answered 429"),
        (Reply.error(500), "image API reachable", Status.FAIL, "answered HTTP 500"),
        (Reply.error(404, "Not Found"), "image API reachable", Status.FAIL, "nothing answers image requests"),
        (Reply.non_json(200), "API key", Status.FAIL, "not the documented JSON"),
        (Reply.ok(), "API key", Status.WARN, "generated an image for the invalid size 0*0"),
    ],
)
async def test_each_answer_to_the_probe_has_its_verdict(
    lax_gateway: FakeImageApi, make_settings, reply: Reply, check: str, status: Status, text: str
) -> None:
    lax_gateway.script(reply)
    findings = await probe_gateway(make_settings(nebula_base_url=lax_gateway.base_url))
    [finding] = [f for f in findings if f.check == check]
    assert finding.status is status and text in finding.detail, finding
    assert len(lax_gateway.requests) == 1  # one request, never retried


async def test_a_model_the_gateway_refuses_is_named(fake_api: FakeImageApi, make_settings) -> None:
    findings = await probe_gateway(make_settings(image_model="qwen-image-nope"))
    [key] = [f for f in findings if f.check == "API key"]
    assert key.status is Status.FAIL and "model not found" in key.detail
    assert key.fix is not None and "IMAGE_MODEL (qwen-image-nope)" in key.fix
