"""What every benchmark needs: the fakes in processes of their own, and the bot's settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr

from bot.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def start(*args: str, marker: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Start `python -m <args>` and read the line in which it announces its address."""
    process = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline().split()
    if not line or line[0] != marker:
        process.kill()
        raise RuntimeError(f"{args[0]} did not start")
    return process, line[1:]


def http(method: str, url: str, body: object | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.25) -> T:
    """Poll until `predicate()` is truthy or `timeout` s have passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def slash(control: str, prompt: str, guild_id: int, user_id: int) -> tuple[str, float]:
    """Push one /imagine through the fake Discord's control API; its interaction id and when it was
    pushed (wall clock)."""
    at = time.time()
    body = {"name": "imagine", "options": {"prompt": prompt}, "guild_id": guild_id, "user_id": user_id}
    sent = http("POST", control + "/slash", body)
    return sent["id"], at  # type: ignore[index]


def bench_settings(image_base: str, **overrides: object) -> Settings:
    """The bot against the fakes, in a fresh temp folder, with no per-user or budget limits."""
    workdir = Path(tempfile.mkdtemp(prefix="imagine-bench-"))
    values: dict[str, object] = {
        "_env_file": None,
        "discord_token": "fake-bot-token",
        "nebula_api_key": "test-key",
        "nebula_base_url": image_base,
        "database_url": f"sqlite:///{workdir / 'bench.db'}",
        "cache_dir": workdir / "cache",
        "user_daily_limit": "none",
        "guild_daily_budget_cny": "none",
        "guild_monthly_budget_cny": "none",
        "log_level": "WARNING",
        **overrides,
    }
    return load_settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that give `python -m bot` these settings (the values set explicitly)."""
    env: dict[str, str] = {}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is None:
            if Settings.model_fields[name].default is None:
                continue  # unset is the default already
            text = "none"  # a limit turned off
        elif isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, tuple):
            text = ",".join(value)
        else:
            text = str(value)
        env[name.upper()] = text
    return env


def start_bot(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m bot run` in a process of its own, configured only through its environment.

    It runs in the folder of its database (no `.env` there), with this checkout first on its path;
    any setting inherited from our own environment is dropped. Its log goes to `log_path`.
    """
    env = {key: value for key, value in os.environ.items() if key.lower() not in Settings.model_fields}
    env.update(settings_env(settings), PYTHONPATH=str(ROOT))
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bot", "run"],
            cwd=settings.database_path.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[Any], timeout: float = 20.0) -> int:
    """SIGTERM, then SIGKILL if it has not ended within `timeout`; its return code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def start_bot_in(
    settings: Settings, log_path: Path, workdir: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`start_bot` for a store that is not a file (PostgreSQL): it runs in `workdir`, and `extra_env`
    adds what `settings_env` cannot spell (e.g. `SHARD_IDS`, whose values are numbers)."""
    env = {key: value for key, value in os.environ.items() if key.lower() not in Settings.model_fields}
    env.update(settings_env(settings), **(extra_env or {}), PYTHONPATH=str(ROOT))
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bot", "run"],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@contextmanager
def bot_process(settings: Settings, control: str, log_path: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m bot run` against the fake Discord at `control`, ready to answer once this yields
    (connected, READY, and past discord.py's 2 s wait for the guilds); stopped on the way out."""
    log_path = log_path or settings.database_path.parent / "bot.log"
    bot = start_bot(settings, log_path)
    try:
        deadline = time.monotonic() + 60
        while not http("GET", control + "/state")["ready"]:  # type: ignore[index]
            if bot.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bot did not connect; see {log_path}")
            time.sleep(0.1)
        time.sleep(2.5)  # discord.py waits guild_ready_timeout (2 s) after the last GUILD_CREATE
        yield bot
    finally:
        stop(bot)


class Deadline(Exception):
    """The run passed its hard deadline."""


@contextmanager
def hard_deadline(seconds: float) -> Iterator[None]:
    """Raise Deadline in the main thread after `seconds` (SIGALRM), whatever it is waiting on."""

    def expire(signum: int, frame: object) -> None:
        raise Deadline(f"the run passed its hard deadline of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
