"""`imagine-bot generate` with the result cache, and `imagine-bot cache stats|prune|clear`, as
subprocesses against the loopback fake image API."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.fakes.image_api import FakeImageApi
from tests.test_cli import job_rows, run_cli

PROMPT = "A kite over green hills"


def cache_rows(tmp_path: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(tmp_path / "imagine.db") as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT * FROM image_cache").fetchall()


def cached_files(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def generate(tmp_path: Path, fake: FakeImageApi, output: str, prompt: str = PROMPT, *args: str, **env: str):
    result = run_cli(tmp_path, fake, "generate", prompt, *args, "-o", output, **env)
    assert result.returncode == 0, result.stderr
    return result


def stats_line(output: str, name: str) -> str:
    [line] = [line for line in output.splitlines() if line.startswith(f"{name}:")]
    return line.split(":", 1)[1].strip()


def test_the_same_prompt_twice_is_generated_once(tmp_path: Path, fake_api: FakeImageApi) -> None:
    first = generate(tmp_path, fake_api, "one.png")
    second = generate(tmp_path, fake_api, "two.png")
    assert fake_api.generation_count == 1
    assert "from cache" not in first.stdout and "cost: ¥0.18;" in first.stdout
    assert "cost: ¥0.00 (from cache: the same request was made before)" in second.stdout
    assert (tmp_path / "two.png").read_bytes() == (tmp_path / "one.png").read_bytes()
    assert f"request id: {fake_api.requests[0].request_id}" in second.stdout  # where the image came from
    rows = sorted(job_rows(tmp_path), key=lambda r: r["cache_hit"])
    assert [(r["state"], r["cache_hit"], r["cost_fen"], r["upstream_fen"]) for r in rows] == [
        ("delivered", 0, 18, 18),
        ("delivered", 1, 0, 0),
    ]


def test_other_options_are_not_served_from_the_cache(tmp_path: Path, fake_api: FakeImageApi) -> None:
    generate(tmp_path, fake_api, "one.png")
    other = run_cli(tmp_path, fake_api, "generate", PROMPT, "--no-watermark", "-o", "two.png")
    assert other.returncode == 0, other.stderr
    assert "from cache" not in other.stdout
    assert fake_api.generation_count == 2


def test_a_ttl_of_zero_turns_the_cache_off(tmp_path: Path, fake_api: FakeImageApi) -> None:
    generate(tmp_path, fake_api, "one.png", CACHE_TTL_HOURS="0")
    second = generate(tmp_path, fake_api, "two.png", CACHE_TTL_HOURS="0")
    assert "from cache" not in second.stdout
    assert fake_api.generation_count == 2
    assert cache_rows(tmp_path) == [] and cached_files(tmp_path) == []


def test_usage_shows_the_hit_at_zero_cost(tmp_path: Path, fake_api: FakeImageApi) -> None:
    generate(tmp_path, fake_api, "one.png")
    generate(tmp_path, fake_api, "two.png")
    table = run_cli(tmp_path, fake_api, "usage")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[2].split() == ["total", "2", "0", "0.18", "0.18"]


def test_cache_stats_shows_entries_and_hits(tmp_path: Path, fake_api: FakeImageApi) -> None:
    generate(tmp_path, fake_api, "one.png")
    generate(tmp_path, fake_api, "two.png")
    generate(tmp_path, fake_api, "three.png")
    result = run_cli(tmp_path, fake_api, "cache", "stats")
    assert result.returncode == 0, result.stderr
    assert stats_line(result.stdout, "entries") == "1"
    assert stats_line(result.stdout, "hits") == "2 image(s) delivered from the cache, ¥0.36 saved"
    assert stats_line(result.stdout, "size") == "0.0 MiB of 500 MiB"
    assert stats_line(result.stdout, "ttl").startswith("24 h (oldest 20")


def test_cache_clear_forgets_everything_and_the_next_request_goes_upstream(
    tmp_path: Path, fake_api: FakeImageApi
) -> None:
    generate(tmp_path, fake_api, "one.png")
    generate(tmp_path, fake_api, "another.png", "A boat on a calm lake")
    assert len(cached_files(tmp_path)) >= 1
    cleared = run_cli(tmp_path, fake_api, "cache", "clear")
    assert cleared.returncode == 0, cleared.stderr
    assert "cleared 2 entr(y/ies)" in cleared.stdout and stats_line(cleared.stdout, "entries") == "0"
    assert cache_rows(tmp_path) == [] and cached_files(tmp_path) == []
    again = generate(tmp_path, fake_api, "two.png")
    assert "from cache" not in again.stdout
    assert fake_api.generation_count == 3


def test_cache_prune_drops_expired_entries(tmp_path: Path, fake_api: FakeImageApi) -> None:
    wide = ("--size", "1664*928")  # other bytes: each entry has its own file
    generate(tmp_path, fake_api, "old.png", "An old request", *wide)
    generate(tmp_path, fake_api, "new.png", "A new request")
    old = next(r for r in job_rows(tmp_path) if r["prompt"] == "An old request")
    with sqlite3.connect(tmp_path / "imagine.db") as db:  # made long ago
        db.execute(
            "UPDATE image_cache SET created_at = '2000-01-01T00:00:00.000+00:00',"
            " last_used_at = '2000-01-01T00:00:00.000+00:00' WHERE source_job_id = ?",
            (old["id"],),
        )
    pruned = run_cli(tmp_path, fake_api, "cache", "prune")
    assert pruned.returncode == 0, pruned.stderr
    assert "pruned 1 entr(y/ies)" in pruned.stdout and stats_line(pruned.stdout, "entries") == "1"
    [kept] = cache_rows(tmp_path)
    assert kept["source_job_id"] != old["id"]
    assert [p.name for p in cached_files(tmp_path)] == [kept["sha256"]]  # the expired file is gone
    assert "from cache" not in generate(tmp_path, fake_api, "old-again.png", "An old request", *wide).stdout
    assert "from cache" in generate(tmp_path, fake_api, "new-again.png", "A new request").stdout


def test_cache_prune_enforces_a_smaller_size_cap(tmp_path: Path, fake_api: FakeImageApi) -> None:
    generate(tmp_path, fake_api, "one.png")
    pruned = run_cli(tmp_path, fake_api, "cache", "prune", CACHE_MAX_MB="0")
    assert pruned.returncode == 0, pruned.stderr
    assert "pruned 1 entr(y/ies)" in pruned.stdout
    assert cache_rows(tmp_path) == [] and cached_files(tmp_path) == []
