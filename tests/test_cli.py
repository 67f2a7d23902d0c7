"""`imagine-bot` end to end, as a subprocess against the loopback fake image API."""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_API_KEY, env_for
from tests.fakes.image_api import FakeImageApi, Reply
from tests.fakes.png import png_size

BIN = Path(sys.executable).parent


def run_cli(tmp_path: Path, fake: FakeImageApi | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    values = {"DATABASE_URL": f"sqlite:///{tmp_path / 'imagine.db'}", "CACHE_DIR": str(tmp_path / "cache")}
    if fake is not None:
        values.update(NEBULA_API_KEY=TEST_API_KEY, NEBULA_BASE_URL=fake.base_url)
    values.update(env)
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=tmp_path,
        env=env_for(values),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def job_rows(tmp_path: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(tmp_path / "imagine.db") as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT * FROM jobs").fetchall()


def assert_no_secret(result: subprocess.CompletedProcess[str]) -> None:
    assert TEST_API_KEY not in result.stdout + result.stderr


def test_generate_writes_a_png_and_records_the_job(tmp_path: Path, fake_api: FakeImageApi) -> None:
    fake_api.script(Reply.ok(revised_prompt="An orange kitten on a sofa"))
    result = run_cli(tmp_path, fake_api, "generate", "A cute orange kitten", "-o", "kitten.png")
    assert result.returncode == 0, result.stderr
    assert png_size((tmp_path / "kitten.png").read_bytes()) == (1328, 1328)
    request_id = fake_api.requests[0].request_id
    assert "wrote kitten.png" in result.stdout
    assert "1:1 square 1328×1328" in result.stdout
    assert f"request id: {request_id}" in result.stdout
    assert "cost: ¥0.18" in result.stdout
    [row] = job_rows(tmp_path)
    assert (row["requester"], row["state"], row["cost_fen"], row["request_id"]) == (
        "cli",
        "delivered",
        18,
        request_id,
    )
    assert row["revised_prompt"] == "An orange kitten on a sofa"
    assert_no_secret(result)


def test_generate_passes_every_option(tmp_path: Path, fake_api: FakeImageApi) -> None:
    result = run_cli(
        tmp_path,
        fake_api,
        "generate",
        "A quiet lake",
        "--style",
        "photo",
        "--size",
        "1472*1140",
        "--negative",
        "people",
        "--no-extend",
        "--no-watermark",
    )
    assert result.returncode == 0, result.stderr
    assert fake_api.requests[0].json["parameters"] == {
        "size": "1472*1140",
        "negative_prompt": "people",
        "prompt_extend": False,
        "watermark": False,
    }
    [row] = job_rows(tmp_path)
    assert (tmp_path / f"imagine-{row['id']}.png").is_file()
    assert row["style"] == "photo"


def test_inline_b64_image_is_written_too(tmp_path: Path, fake_api: FakeImageApi) -> None:
    fake_api.script(Reply.ok(b64=True))
    result = run_cli(tmp_path, fake_api, "generate", "kitten", "--size", "928*1664", "-o", "k.png")
    assert result.returncode == 0, result.stderr
    assert png_size((tmp_path / "k.png").read_bytes()) == (928, 1664)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["   "], "The prompt is empty"),
        (["x" * 801], "the limit is 800"),
        (["kitten", "--size", "800*600"], "Unknown size '800*600'"),
        (["kitten", "--negative", "bad\x07bell"], "control character"),
    ],
)
def test_invalid_input_exits_2_and_sends_nothing(tmp_path: Path, fake_api: FakeImageApi, args, message) -> None:
    result = run_cli(tmp_path, fake_api, "generate", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert fake_api.requests == []


@pytest.mark.parametrize(
    ("reply", "code", "message"),
    [
        (
            Reply.error(400, "Parameter Error: Unsupported image size"),
            3,
            "refused the request: Parameter Error",
        ),
        (Reply.content_rejected(), 3, "refused this prompt (content safety)"),
        (Reply.error(401), 3, "unavailable right now"),
        (Reply.error(403), 3, "unavailable right now"),
        (Reply.error(429, retry_after=0), 4, "too busy"),
        (Reply.error(500), 4, "failed after several tries"),
        (Reply.non_json(502), 4, "failed after several tries"),
        (Reply.non_json(200), 4, "unexpected reply"),
        (Reply.no_image(), 4, "unexpected reply"),
        (Reply.ok(image="missing"), 4, "could not be fetched"),
        (Reply.ok(url="https://evil.example.com/x.png"), 4, "could not be fetched"),
    ],
)
def test_each_error_has_its_exit_code_and_one_line(
    tmp_path: Path, fake_api: FakeImageApi, reply, code, message
) -> None:
    fake_api.script(reply)
    result = run_cli(tmp_path, fake_api, "generate", "kitten", UPSTREAM_MAX_RETRIES="0")
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("imagine-bot:")]
    assert len(lines) == 1 and message in lines[0]
    assert "Nothing was charged" in lines[0]
    request_id = fake_api.requests[0].request_id
    assert request_id in lines[0] or request_id in result.stderr  # logged with the upstream request id
    [row] = job_rows(tmp_path)
    assert (row["state"], row["cost_fen"]) == ("failed", 0)
    assert not (tmp_path / "kitten.png").exists()
    assert_no_secret(result)


def test_authentication_failure_tells_the_operator_what_to_do(tmp_path: Path, fake_api: FakeImageApi) -> None:
    result = run_cli(tmp_path, fake_api, "generate", "kitten", NEBULA_API_KEY="sk-wrong-key-1234")
    assert result.returncode == 3
    assert "NEBULA_API_KEY was refused" in result.stderr
    assert "sk-wrong-key-1234" not in result.stderr + result.stdout


def test_missing_api_key_is_one_clear_line(tmp_path: Path) -> None:
    result = run_cli(tmp_path, None, "generate", "kitten")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "imagine-bot: NEBULA_API_KEY is not set: put your Nebula gateway API key in .env "
        "(see .env.example) or the environment."
    )


def test_invalid_setting_is_one_clear_line(tmp_path: Path, fake_api: FakeImageApi) -> None:
    result = run_cli(tmp_path, fake_api, "generate", "kitten", UPSTREAM_RPM="lots")
    assert result.returncode == 2
    assert result.stderr.startswith("imagine-bot: UPSTREAM_RPM is invalid")
    assert len(result.stderr.strip().splitlines()) == 1


def test_usage_summarises_the_ledger(tmp_path: Path, fake_api: FakeImageApi) -> None:
    assert run_cli(tmp_path, fake_api, "generate", "one").returncode == 0
    assert run_cli(tmp_path, fake_api, "generate", "two").returncode == 0
    fake_api.script(Reply.error(500))
    assert run_cli(tmp_path, fake_api, "generate", "three", UPSTREAM_MAX_RETRIES="0").returncode == 4

    table = run_cli(tmp_path, fake_api, "usage")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["total", "images", "failures", "cost", "¥", "upstream", "¥"]
    assert lines[2].split() == ["total", "2", "1", "0.36", "0.36"]
    assert "by requester" in table.stdout and "by day" in table.stdout

    result = run_cli(tmp_path, fake_api, "usage", "--csv", "--since", "2000-01-01")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    by_requester = [r for r in rows if r["section"] == "requester"]
    assert by_requester == [
        {
            "section": "requester",
            "key": "cli",
            "images": "2",
            "failures": "1",
            "cost_cny": "0.36",
            "upstream_cny": "0.36",
        }
    ]
    assert run_cli(tmp_path, fake_api, "usage", "--csv", "--since", "2999-01-01").stdout.count("\n") == 2


def test_usage_without_a_database(tmp_path: Path) -> None:
    result = run_cli(tmp_path, None, "usage")
    assert result.returncode == 0
    assert "nothing has been generated" in result.stdout


def test_console_script_is_installed(tmp_path: Path) -> None:
    script = BIN / "imagine-bot"
    assert os.access(script, os.X_OK)
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for command in ("run", "generate", "usage"):
        assert command in result.stdout


def test_usage_and_limits_for_one_guild(tmp_path: Path, fake_api: FakeImageApi) -> None:
    import asyncio

    from bot.storage.db import SqliteStore
    from bot.storage.guilds import GuildStore
    from bot.storage.jobs import JobStore, NewJob

    async def seed() -> None:
        store = await SqliteStore.open(tmp_path / "imagine.db")
        jobs = JobStore(store)
        for job_id, guild, user in ((1, 10, 100), (2, 10, 100), (3, 10, 200), (4, 20, 300)):
            await jobs.insert(
                NewJob(
                    job_id,
                    str(user),
                    "imagine",
                    "qwen-image-plus",
                    "p",
                    "1328*1328",
                    "",
                    True,
                    True,
                    guild_id=guild,
                    user_id=user,
                )
            )
            await jobs.mark_submitting(job_id)
            await jobs.mark_generated(job_id, request_id=None, image_url="u", revised_prompt="", upstream_fen=18)
            await jobs.mark_delivered(job_id, cost_fen=18)
        guilds = GuildStore(store)
        await guilds.update_overrides(
            10,
            {
                "user_daily_limit": 3,
                "timezone": "Asia/Shanghai",
                "role_limits": {"55": {"daily": None, "monthly": None}},
            },
            actor=1,
        )
        await guilds.add_rule(10, "word", "secret", "no secrets", actor=1)
        await store.close()

    asyncio.run(seed())
    result = run_cli(tmp_path, fake_api, "usage", "--guild", "10", "--csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {r["key"]: r["images"] for r in rows if r["section"] == "user"} == {"100": "2", "200": "1"}
    assert [r["images"] for r in rows if r["section"] == "total"] == ["3"]

    limits = run_cli(tmp_path, fake_api, "limits", "--guild", "10")
    assert limits.returncode == 0, limits.stderr
    assert "images per user:   3 a day, unlimited a month" in limits.stdout
    assert "Asia/Shanghai" in limits.stdout
    assert "role 55: unlimited a day" in limits.stdout
    assert "#1 word 'secret': no secrets" in limits.stdout
    assert "¥10.00 a day, ¥100.00 a month" in limits.stdout
