"""Benchmark: how fast a slash command is acknowledged under load (Discord's 3-second rule).

A burst of /imagine interactions at a steady rate, each from a different user, while the
upstream is slow (every job stays queued or generating, so the queue, the store and the
position updates all work during the burst). Measured: from just before the interaction is
pushed to the moment the fake Discord records the bot's first answer (the deferred "thinking"
message, or a private refusal), on the fake's clock.

Three phases, each with fresh fakes and the bot in a process of its own:
- the baseline: a bare discord.py bot whose /imagine only defers (bench/bare_bot.py);
- imagine-bot, every request accepted (a public defer);
- imagine-bot, a mixed burst at the same rate and count: accepted, refused by a limit and
  refused by a prompt rule, interleaved (a third each). Admission decides before the
  acknowledgement, so a refusal is the interaction's one and only answer, a private message.
  Set up before the bot starts, through the project's store code: USER_DAILY_LIMIT=1, the
  "limited" users' `user_day` counters already at 1 for today, and a word rule in the guild
  that the "rule" prompts contain.

Every answer is checked: an accepted request must get a public defer, a refusal one private
message with the expected sentence; any other answer raises (the figures would measure the
wrong thing). The goal (issue 8): each class's p99 at most 2x the baseline's p99, none over 3 s.

    .venv/bin/python -m bench.ack_latency [--requests 200] [--rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from bench.harness import ROOT, bench_settings, bot_process, http, start, stop
from bot.config import Settings

EPHEMERAL, LOADING = 64, 128
DEADLINE_S = 3.0  # Discord's: an interaction not acknowledged by then is dead
GOAL_RATIO = 2.0  # each class's p99 against the baseline's p99
RULE_WORD = "forbidden"
#: what each kind of request must get: a public defer, or a private message starting so
REFUSALS = {
    "limit": "You have used your 1 image(s) for today",
    "rule": "This server does not allow that request",
}
#: Room for the whole burst. With the defaults (2 in flight, 15 s expected per generation: 7.5 s per
#: start) admission refuses every request past the ~110th as "too long to finish within Discord's
#: 15 minutes", privately; 10 in flight (1.5 s per start) admits 200, still queued behind the slow upstream.
ROOM = {"guild_queue_max": 1000, "upstream_concurrency": 10}
LABELS = {
    "accepted": "accepted (public defer)",
    "limit": "refused by limit (private)",
    "rule": "refused by rule (private)",
}


@dataclass(frozen=True, slots=True)
class Push:
    kind: str  # accepted | limit | rule
    user_id: int
    prompt: str


@dataclass(frozen=True, slots=True)
class Sample:
    kind: str
    seconds: float  # inf: no answer at all


def accepted_burst(requests: int) -> list[Push]:
    """Distinct users and distinct prompts (an identical prompt would follow or hit the cache)."""
    return [Push("accepted", 5000 + i, f"p {i}") for i in range(requests)]


def mixed_burst(requests: int) -> list[Push]:
    """Accepted, refused by the daily limit, refused by a rule, interleaved; each from its own user."""
    kinds = ("accepted", "limit", "rule")
    pushes = []
    for i in range(requests):
        kind = kinds[i % 3]
        prompt = f"p {i} {RULE_WORD}" if kind == "rule" else f"p {i}"
        pushes.append(Push(kind, 9000 + i, prompt))
    return pushes


def push_burst(control: str, pushes: list[Push], rate: float) -> dict[str, tuple[float, Push]]:
    """Push at a steady rate (from a worker thread); returns interaction id -> (push time, what)."""
    pushed: dict[str, tuple[float, Push]] = {}
    interval = 1.0 / rate
    begin = time.monotonic()
    for i, push in enumerate(pushes):
        delay = begin + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        at = time.time()
        sent = http(
            "POST", control + "/slash", {"name": "imagine", "options": {"prompt": push.prompt}, "user_id": push.user_id}
        )
        pushed[sent["id"]] = (at, push)  # type: ignore[index]
    return pushed


def wrong_answer(push: Push, answers: list[dict]) -> str | None:
    """Why the interaction's answers are not what its kind must get (None: they are).

    `answers` are the fake's messages for the interaction, in creation order; the first is the
    acknowledgement. A public defer is created with the loading flag, which the bot's first edit
    (the queue position, or the image) clears: so "loading, or edited since", never ephemeral.
    """
    first = answers[0]
    flags, content = first["flags"] or 0, first["content"] or ""
    if push.kind == "accepted":
        if flags & EPHEMERAL or not (flags & LOADING or first["edits"]):
            return f"expected a public defer, got flags={flags} edits={first['edits']} content={content[:80]!r}"
        return None
    expected = REFUSALS[push.kind]
    if not flags & EPHEMERAL or not content.startswith(expected):
        return f"expected a private {expected!r}..., got flags={flags} content={content[:80]!r}"
    if len(answers) != 1:
        return f"a refusal must be the only response, got {len(answers)} messages"
    return None


async def measure(control: str, pushes: list[Push], rate: float) -> list[Sample]:
    """Push the burst at the running bot and read every answer back from the fake Discord."""
    pushed = await asyncio.to_thread(push_burst, control, pushes, rate)
    answers: dict[str, list[dict]] = {}
    deadline = time.monotonic() + 60
    while len(answers) < len(pushed) and time.monotonic() < deadline:
        answers = await asyncio.to_thread(read_answers, control, pushed)
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)  # a second message to a refused interaction would show up by now
    answers = await asyncio.to_thread(read_answers, control, pushed)
    wrong = [
        f"  {push.kind} user {push.user_id} prompt {push.prompt!r}: {why}"
        for key, (_, push) in pushed.items()
        if key in answers and (why := wrong_answer(push, answers[key]))
    ]
    if wrong:
        raise RuntimeError(f"{len(wrong)} interaction(s) got the wrong kind of answer:\n" + "\n".join(wrong[:10]))
    return [
        Sample(push.kind, answers[key][0]["created_at"] - at if key in answers else float("inf"))
        for key, (at, push) in pushed.items()
    ]


def read_answers(control: str, pushed: dict[str, tuple[float, Push]]) -> dict[str, list[dict]]:
    """The fake's messages per pushed interaction, in creation order."""
    found: dict[str, list[dict]] = {}
    for message in sorted(http("GET", control + "/messages"), key=lambda m: m["created_at"]):  # type: ignore[arg-type]
        if message["interaction_id"] in pushed:
            found.setdefault(message["interaction_id"], []).append(message)
    return found


@dataclass(frozen=True, slots=True)
class Fakes:
    control: str
    api_base: str
    gateway: str
    image_base: str


MakeBot = Callable[[Fakes], Awaitable[AbstractContextManager[object]]]


async def phase(make_bot: MakeBot, pushes: list[Push], rate: float) -> list[Sample]:
    """Fresh fakes, the bot (its own process) started by `make_bot`, one burst."""
    discord_proc, (api_base, gateway) = start("tests.fakes.fake_discord", marker="FAKE_DISCORD")
    image_proc, (image_base,) = start("tests.fakes.image_api", "--latency", "5", marker="FAKE_IMAGE_API")
    fakes = Fakes(api_base.split("/api/")[0] + "/_control", api_base, gateway, image_base)
    try:
        with await make_bot(fakes):
            return await measure(fakes.control, pushes, rate)
    finally:
        for process in (discord_proc, image_proc):
            process.terminate()
            process.wait()


@contextmanager
def bare_process(fakes: Fakes) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_bot", fakes.api_base, fakes.gateway],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not http("GET", fakes.control + "/state")["ready"]:  # type: ignore[index]
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bare bot did not connect")
            time.sleep(0.05)
        time.sleep(0.5)  # its guild_ready_timeout is 0.05 s
        yield process
    finally:
        stop(process)


async def bare_bot(fakes: Fakes) -> AbstractContextManager[object]:
    return bare_process(fakes)


def _settings(fakes: Fakes, **overrides: object) -> Settings:
    return bench_settings(
        fakes.image_base, discord_api_base=fakes.api_base, discord_gateway_url=fakes.gateway, **ROOM, **overrides
    )


async def imagine_bot(fakes: Fakes) -> AbstractContextManager[object]:
    return bot_process(_settings(fakes), fakes.control)


def mixed_imagine_bot(limited_users: list[int]) -> MakeBot:
    """imagine-bot with a daily limit of 1 image, the limited users' image for today already used, and
    a word rule in the fake's guild; all written through the project's store before the bot starts."""

    async def make(fakes: Fakes) -> AbstractContextManager[object]:
        from bot.limits import periods
        from bot.storage.db import SqliteStore
        from bot.storage.guilds import GuildStore
        from bot.storage.quotas import Charge, apply_charges

        state = await asyncio.to_thread(http, "GET", fakes.control + "/state")
        guild_id = int(state["guilds"][0]["id"])  # type: ignore[index]  # the guild /slash uses by default
        settings = _settings(fakes, user_daily_limit=1)
        day = periods(datetime.now(UTC), settings.default_timezone).day
        store = await SqliteStore.open(settings.database_path)
        try:
            await GuildStore(store).add_rule(guild_id, "word", RULE_WORD, "no forbidden things", actor=1)
            async with store.transaction() as db:
                await apply_charges(db, [Charge("user_day", f"{guild_id}:{user}", day, 1) for user in limited_users])
        finally:
            await store.close()
        return bot_process(settings, fakes.control)

    return make


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def row(name: str, samples: list[float], base_p99: float | None = None) -> tuple[str, bool]:
    """One table row, and whether it meets the goal (p99 <= 2x the baseline's, none over 3 s)."""
    late = sum(1 for s in samples if s > DEADLINE_S)
    line = (
        f"{name:<32}{len(samples):>5}{statistics.median(samples) * 1000:>10.1f}{p99(samples) * 1000:>10.1f}"
        f"{max(samples) * 1000:>10.1f}{late:>7}"
    )
    if base_p99 is None:
        return line, True
    ratio = p99(samples) / base_p99
    ok = ratio <= GOAL_RATIO and late == 0
    return f"{line}{ratio:>9.2f}x  {'PASS' if ok else 'FAIL'}", ok


async def run(requests: int, rate: float) -> bool:
    """Run the three phases and print the table; returns whether every row met the goal."""
    mixed = mixed_burst(requests)
    bare = await phase(bare_bot, accepted_burst(requests), rate)
    ours = await phase(imagine_bot, accepted_burst(requests), rate)
    limited = [push.user_id for push in mixed if push.kind == "limit"]
    mix = await phase(mixed_imagine_bot(limited), mixed, rate)

    base = [s.seconds for s in bare]
    base_p99 = p99(base)
    print(f"acknowledgement latency, {requests} /imagine at {rate:g}/s per burst, slow upstream (ms)")
    print(f"goal: p99 <= {GOAL_RATIO:g}x the baseline's p99 ({base_p99 * 1000:.1f} ms here), none over 3 s")
    print(f"{'':<32}{'n':>5}{'median':>10}{'p99':>10}{'max':>10}{'>3 s':>7}{'p99/base':>10}  goal")
    lines = [row("bare discord.py defer (base)", base)]
    lines.append(row("imagine-bot, all accepted", [s.seconds for s in ours], base_p99))
    print(*(line for line, _ in lines), sep="\n")
    print(f"imagine-bot, mixed burst ({requests} at {rate:g}/s, a third of each kind, answers checked):")
    for kind, label in LABELS.items():
        lines.append(row(f"  {label}", [s.seconds for s in mix if s.kind == kind], base_p99))
        print(lines[-1][0])
    return all(ok for _, ok in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0)
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.rate))


if __name__ == "__main__":
    main()
