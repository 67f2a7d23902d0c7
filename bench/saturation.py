"""Benchmark: does the bot keep a rate-limited upstream saturated without earning a 429?

Three processes, none inside another's event loop: the fake Discord, the fake image API
(enforcing, like the vendor, RPM in any 60 s, ceil(RPM/60) in any 1 s and C in flight, with
exact sliding windows; each image takes L seconds), and the bot itself (`python -m bot run`,
configured only through its environment, with the same RPM and C as its own limits).

Each case, on fresh processes and a fresh store:
1. warm-up: a few distinct prompts from the "noise" guilds are generated and delivered. This
   primes the result cache for the noise below, and lets the limiter learn how long a
   generation holds its permit (it assumes 15 s until it has seen some, and would refuse a
   large backlog as "too long a wait" for the 15-minute interaction window);
2. a backlog of distinct prompts (no cache hit, no shared flight) from many users in a few
   guilds is pushed at once; the queue maxima are raised so that none is refused;
3. from 1 s before the backlog until its last generation has started, the noise guilds send a
   steady stream of /imagine that the cache answers: each one an admission that writes the
   store (job insert, reply message, cache hit, delivered) and an upload, so the store's write
   lock is contended while the backlog runs.

Measured on the fake image API's clock (its `GET /_stats`): the start of every generation it
admitted, and the 429s it had to send (rate or concurrency). The ideal is
min(RPM, 60 * C / L) starts per minute. The steady-state rate is taken over the backlog's
starts between (first backlog start + skip) and (last backlog start - skip), as the slope of
a least-squares line through (start time, start number): starts come in bursts (ceil(RPM/60)
at a time, or C at a time when the slots free together), and a count over the window would
depend on where its edges cut a burst. For reference, "whole" is (n - 1) / (last - first) over
the whole backlog: it includes what an early pause cost, and reads a little high when starts
come in bursts (one burst too many: +0.7 % for 150 starts in pairs, +3 % for 30). Goal: >= 98 %
of the ideal in the steady state, and no 429 in the whole case (warm-up included).

Also printed per case: the backlog's outcome (all must be admitted and delivered), the
acknowledgement latency of the backlog and of the noise (push to the bot's first answer, on
the fake Discord's clock), when each 429 came and what the fake had admitted in the second
before it, and the bot's "upstream paused" log lines. The bot's log is kept in its temp folder.

    .venv/bin/python -m bench.saturation [--cases rpm,concurrency] [--runs 1] [--noise-rate 15]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import threading
import time
import urllib.error
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.harness import bench_settings, http, start, start_bot, stop

GOAL_RATIO = 0.98
NOISE_USERS = 200
T = TypeVar("T")


@dataclass(frozen=True)
class Case:
    name: str
    rpm: int
    concurrency: int
    latency: float
    jobs: int

    @property
    def ideal_per_min(self) -> float:
        return min(self.rpm, 60 * self.concurrency / self.latency)

    @property
    def bound(self) -> str:
        return "rpm" if self.rpm <= 60 * self.concurrency / self.latency else "concurrency"


@dataclass
class Result:
    case: Case
    skip: float
    starts: list[float] = field(default_factory=list)  # the backlog's admitted starts, fake's clock
    rate_limited: int = 0  # 429s the fake sent during the whole case
    rate_limited_at: list[float] = field(default_factory=list)
    all_starts: list[float] = field(default_factory=list)  # warm-up included
    max_in_flight: int = 0
    delivered: int = 0
    refused: int = 0
    backlog_acks: list[float] = field(default_factory=list)
    noise_acks: list[float] = field(default_factory=list)
    noise_sent: int = 0
    noise_failed: int = 0
    noise_seconds: float = 0.0
    bot_pauses: int = 0  # "upstream paused" lines in the bot's log
    bot_exit: int | None = None
    log_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def window(self) -> list[float]:
        if len(self.starts) < 2:
            return self.starts
        low, high = self.starts[0] + self.skip, self.starts[-1] - self.skip
        inside = [t for t in self.starts if low <= t <= high]
        return inside if len(inside) >= 10 else self.starts

    @property
    def steady_per_min(self) -> float:
        return 60 * slope(self.window)

    @property
    def whole_per_min(self) -> float:
        if len(self.starts) < 2 or self.starts[-1] <= self.starts[0]:
            return 0.0
        return 60 * (len(self.starts) - 1) / (self.starts[-1] - self.starts[0])

    @property
    def ratio(self) -> float:
        return self.steady_per_min / self.case.ideal_per_min

    @property
    def complete(self) -> bool:
        return len(self.starts) >= self.case.jobs and self.delivered == self.case.jobs

    @property
    def passed(self) -> bool:
        return self.complete and self.ratio >= GOAL_RATIO and self.rate_limited == 0


def slope(times: list[float]) -> float:
    """Starts per second: least-squares slope of the start number against the start time."""
    n = len(times)
    if n < 2:
        return 0.0
    mean_t, mean_i = statistics.fmean(times), (n - 1) / 2
    var = sum((t - mean_t) ** 2 for t in times)
    return sum((t - mean_t) * (i - mean_i) for i, t in enumerate(times)) / var if var else 0.0


def slash(control: str, prompt: str, guild_id: int, user_id: int) -> tuple[str, float]:
    """Push one /imagine; its interaction id and when it was pushed (wall clock)."""
    at = time.time()
    body = {"name": "imagine", "options": {"prompt": prompt}, "guild_id": guild_id, "user_id": user_id}
    sent = http("POST", control + "/slash", body)
    return sent["id"], at  # type: ignore[index]


class Noise(threading.Thread):
    """Steady /imagine from other guilds, every prompt one the cache already holds."""

    def __init__(self, control: str, guild_ids: list[int], prompts: list[str], rate: float) -> None:
        super().__init__(daemon=True, name="noise")
        self._control, self._guilds, self._prompts, self._rate = control, guild_ids, prompts, rate
        self._halt = threading.Event()
        self.pushed: dict[str, float] = {}
        self.failed = 0
        self.seconds = 0.0

    def run(self) -> None:
        if self._rate <= 0:
            return
        begin = due = time.monotonic()
        i = 0
        while not self._halt.wait(max(0.0, due - time.monotonic())):
            prompt, guild = self._prompts[i % len(self._prompts)], self._guilds[i % len(self._guilds)]
            try:
                key, at = slash(self._control, prompt, guild, 900_000 + i % NOISE_USERS)
                self.pushed[key] = at
            except (OSError, urllib.error.URLError):
                self.failed += 1
            i += 1
            due = max(due + 1.0 / self._rate, time.monotonic() - 1.0)  # behind by more than 1 s: no burst
        self.seconds = time.monotonic() - begin

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


@dataclass
class Answers:
    """What the fake Discord shows of a set of interactions."""

    first_at: dict[str, float]  # interaction id -> when its first message (defer or refusal) was made
    delivered: set[str]
    refused: set[str]

    @classmethod
    def read(cls, control: str, ids: set[str] | dict[str, float]) -> Answers:
        first_at: dict[str, float] = {}
        delivered, refused = set(), set()
        for message in http("GET", control + "/messages"):  # type: ignore[union-attr]
            key = message["interaction_id"]
            if key not in ids:
                continue
            first_at[key] = min(first_at.get(key, math.inf), message["created_at"])
            if message["attachments"]:
                delivered.add(key)
            elif message["flags"] & 64:
                refused.add(key)
        return cls(first_at, delivered, refused - delivered)

    def acks(self, pushed: dict[str, float]) -> list[float]:
        return [self.first_at.get(key, math.inf) - at for key, at in pushed.items()]


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.25) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def run_case(
    case: Case, *, users: int, guilds: int, noise_guilds: int, noise_rate: float, warmup: int, skip: float
) -> Result:
    discord_proc, (api_base, gateway) = start(
        "tests.fakes.fake_discord", "--guilds", str(guilds + noise_guilds), "--max-recorded-requests", "2000",
        marker="FAKE_DISCORD",
    )  # fmt: skip
    image_proc, (image_base,) = start(
        "tests.fakes.image_api", "--latency", str(case.latency), "--rpm", str(case.rpm),
        "--concurrency", str(case.concurrency),
        marker="FAKE_IMAGE_API",
    )  # fmt: skip
    control = api_base.split("/api/")[0] + "/_control"
    stats_url = image_base.removesuffix("/v1") + "/_stats"
    settings = bench_settings(
        image_base,
        discord_api_base=api_base,
        discord_gateway_url=gateway,
        upstream_rpm=case.rpm,
        upstream_concurrency=case.concurrency,
        guild_queue_max=1000,
        user_pending_max=100,
        shutdown_grace_s=5,
    )
    result = Result(case, skip, log_path=settings.database_path.parent / "bot.log")
    bot = start_bot(settings, result.log_path)  # type: ignore[arg-type]
    noise: Noise | None = None
    try:
        state = wait_until(lambda: _ready_state(control, bot), 60)
        if not state:
            raise RuntimeError(f"the bot did not connect; see {result.log_path}")
        time.sleep(2.5)  # discord.py waits guild_ready_timeout (2 s) after the last GUILD_CREATE
        guild_ids = [int(g["id"]) for g in state["guilds"]]
        backlog_guilds, other_guilds = guild_ids[:guilds], guild_ids[guilds:]

        # 1. warm-up: prime the cache for the noise, let the limiter learn the hold time
        prompts = [f"noise prompt {n}" for n in range(warmup)]
        warm = dict(slash(control, p, other_guilds[n % len(other_guilds)], 800_000 + n) for n, p in enumerate(prompts))
        if not wait_until(lambda: len(Answers.read(control, warm).delivered) == len(warm), 120):
            result.notes.append("the warm-up was not fully delivered: the noise may not all be cache hits")
        base = len(http("GET", stats_url)["starts"])  # type: ignore[index]

        # 2 and 3: the noise, then the whole backlog at once
        noise = Noise(control, other_guilds, prompts, noise_rate)
        noise.start()
        time.sleep(1.0)
        jobs = [
            (f"{case.name} backlog {n}", backlog_guilds[(n % users) % guilds], 100_000 + n % users)
            for n in range(case.jobs)
        ]
        with ThreadPoolExecutor(4) as pool:
            backlog = dict(pool.map(lambda job: slash(control, *job), jobs))
        expected_s = case.jobs / case.ideal_per_min * 60
        wait_until(lambda: len(http("GET", stats_url)["starts"]) >= base + case.jobs, expected_s * 2 + 60, 0.5)  # type: ignore[index]
        noise.stop()
        result.noise_failed, result.noise_seconds = noise.failed, noise.seconds
        result.noise_sent = len(noise.pushed)
        wait_until(lambda: len(Answers.read(control, backlog).delivered) == case.jobs, 30, 1.0)  # the last ones
        time.sleep(1.0)  # the last noise answers
        answers = Answers.read(control, {**backlog, **noise.pushed})
        result.delivered = len(answers.delivered & backlog.keys())
        result.refused = len(answers.refused & backlog.keys())
        result.backlog_acks, result.noise_acks = answers.acks(backlog), answers.acks(noise.pushed)
        stats: dict[str, Any] = http("GET", stats_url)  # type: ignore[assignment]
        result.all_starts = stats["starts"]
        result.starts = stats["starts"][base:]
        result.rate_limited = stats["rate_limited_count"]
        result.rate_limited_at = stats["rate_limited_at"]
        result.max_in_flight = stats["max_in_flight"]
    finally:
        if noise is not None and noise.is_alive():
            noise.stop()
        result.bot_exit = stop(bot)
        for process in (discord_proc, image_proc):
            stop(process, 10)
    result.bot_pauses = result.log_path.read_text(errors="replace").count("upstream paused")  # type: ignore[union-attr]
    shutil.rmtree(settings.cache_dir, ignore_errors=True)  # keep only the bot's log
    for db in settings.database_path.parent.glob(settings.database_path.name + "*"):
        db.unlink()
    return result


def _ready_state(control: str, bot: Any) -> dict[str, Any] | None:
    if bot.poll() is not None:
        raise RuntimeError(f"the bot exited with {bot.returncode} before connecting")
    state: dict[str, Any] = http("GET", control + "/state")  # type: ignore[assignment]
    return state if state["ready"] else None


def header() -> str:
    return (
        f"{'case':<12}{'rpm':>5}{'C':>3}{'L s':>5}{'ideal/min':>10}{'measured/min':>13}{'ratio':>8}"
        f"{'whole':>8}{'429s':>6}  {'goal':<15}result"
    )


def row(result: Result) -> str:
    case = result.case
    verdict = "PASS" if result.passed else "FAIL" + ("" if result.complete else " (backlog incomplete)")
    return (
        f"{case.name:<12}{case.rpm:>5}{case.concurrency:>3}{case.latency:>5g}{case.ideal_per_min:>10.1f}"
        f"{result.steady_per_min:>13.1f}{result.ratio:>8.1%}{result.whole_per_min / case.ideal_per_min:>8.1%}"
        f"{result.rate_limited:>6}  {'>= 98 % and 0':<15}{verdict}"
    )


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples) or [0.0]
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _acks(samples: list[float]) -> str:
    if not samples:
        return "none"
    ordered = sorted(samples)
    late = sum(1 for s in samples if s > 3.0)
    return (
        f"median {statistics.median(ordered) * 1000:.0f} ms, p99 {_p(ordered, 0.99) * 1000:.0f} ms,"
        f" max {ordered[-1] * 1000:.0f} ms, {late} over 3 s"
    )


def details(result: Result) -> str:
    case, window = result.case, result.window
    per_second = math.ceil(case.rpm / 60)
    spans = [window[i + per_second] - window[i] for i in range(len(window) - per_second)]
    gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
    zero = result.starts[0] if result.starts else 0.0
    # with every slot busy, start i takes the slot of start i - C once its answer (L s later) is back
    idle = [window[i] - window[i - case.concurrency] - case.latency for i in range(case.concurrency, len(window))]
    lines = [
        f"  {len(result.starts)}/{case.jobs} backlog starts, {result.delivered} delivered, {result.refused} refused;"
        f" window {window[-1] - window[0] if window else 0:.1f} s with {len(window)} starts"
        f"{' (too short a backlog to skip the ends)' if window is result.starts else ''}; longest gap"
        f" {max(gaps, default=0):.3f} s; median time for {per_second} starts {statistics.median(spans or [0]):.3f} s;"
        f" at most {result.max_in_flight} in flight at the fake",
        f"  acknowledged: backlog {_acks(result.backlog_acks)}; noise {_acks(result.noise_acks)}",
        f"  noise: {result.noise_sent} cache-answered /imagine in {result.noise_seconds:.1f} s"
        f" ({result.noise_sent / result.noise_seconds if result.noise_seconds else 0:.1f}/s,"
        f" {result.noise_failed} failed pushes)",
    ]
    if case.bound == "concurrency":
        lines.insert(
            1,
            f"  a slot's idle time, from an answer (start C earlier + L) to the next start: median"
            f" {statistics.median(idle or [0]) * 1000:.0f} ms, p90 {_p(idle, 0.9) * 1000:.0f} ms",
        )
    for at in result.rate_limited_at:
        before = [t for t in result.all_starts if at - 1.0 < t <= at]
        lines.append(
            f"  429 at {at - zero:+.3f} s from the first backlog start; admitted in the second before it:"
            f" {', '.join(f'{t - zero:+.3f}' for t in before) or 'none'}"
        )
    bot = f"{result.bot_pauses} 'upstream paused' log line(s), exit {result.bot_exit}, log {result.log_path}"
    lines.append(f"  bot: {bot}")
    lines += [f"  note: {note}" for note in result.notes]
    return "\n".join(lines)


def default_cases(rpm_jobs: int = 150, concurrency_jobs: int = 240) -> list[Case]:
    return [
        # 120/min against 60*4/0.5 = 480/min: the rate windows bind (2 starts per second)
        Case("rpm-bound", rpm=120, concurrency=4, latency=0.5, jobs=rpm_jobs),
        # 60*2/0.5 = 240/min against 600/min: the two slots bind
        Case("conc-bound", rpm=600, concurrency=2, latency=0.5, jobs=concurrency_jobs),
    ]


def run(
    cases: list[Case] | None = None,
    *,
    runs: int = 1,
    users: int = 30,
    guilds: int = 2,
    noise_guilds: int = 2,
    noise_rate: float = 15.0,
    warmup: int = 16,
    skip: float = 5.0,
) -> list[Result]:
    """Run the cases (`runs` times), print a row and details per case; the results."""
    cases = default_cases() if cases is None else cases
    print(
        f"saturation, on {os.cpu_count()} core(s): the bot, the fake Discord and the fake image API in processes of"
        f" their own; a backlog from {users} users in {guilds} guilds pushed at once, while {noise_guilds} other"
        f" guilds send {noise_rate:g}/s cache-answered /imagine. On the fake image API's clock: measured ="
        f" least-squares starts/min over the backlog's starts less {skip:g} s at each end; whole = (n - 1) /"
        f" (last - first) over all of them"
    )
    results: list[Result] = []
    for n in range(runs):
        if runs > 1:
            print(f"run {n + 1}/{runs}")
        print(header(), flush=True)
        for case in cases:
            kw = {"users": users, "guilds": guilds, "noise_guilds": noise_guilds, "noise_rate": noise_rate}
            result = run_case(case, warmup=warmup, skip=skip, **kw)  # type: ignore[arg-type]
            results.append(result)
            print(row(result))
            print(details(result), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="rpm,concurrency", help="rpm, concurrency or both (comma-separated)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--rpm-jobs", type=int, default=150, help="backlog of the rpm-bound case (120/min)")
    parser.add_argument("--concurrency-jobs", type=int, default=240, help="backlog of the concurrency-bound case")
    parser.add_argument("--users", type=int, default=30, help="users sending the backlog")
    parser.add_argument("--guilds", type=int, default=2, help="guilds the backlog comes from")
    parser.add_argument("--noise-guilds", type=int, default=2, help="other guilds, sending cache-answered /imagine")
    parser.add_argument("--noise-rate", type=float, default=15.0, help="their /imagine per second (0: none)")
    parser.add_argument("--warmup", type=int, default=16, help="prompts generated first (the noise's cached prompts)")
    parser.add_argument("--skip", type=float, default=5.0, help="seconds left out at each end of the backlog")
    args = parser.parse_args()
    chosen = {name.strip() for name in args.cases.split(",")}
    cases = [c for c in default_cases(args.rpm_jobs, args.concurrency_jobs) if c.bound in chosen]
    results = run(
        cases,
        runs=args.runs,
        users=args.users,
        guilds=args.guilds,
        noise_guilds=args.noise_guilds,
        noise_rate=args.noise_rate,
        warmup=max(1, args.warmup),
        skip=args.skip,
    )
    raise SystemExit(0 if all(r.passed for r in results) else 1)


if __name__ == "__main__":
    main()
