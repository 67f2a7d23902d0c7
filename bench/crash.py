"""Benchmark: nothing lost, nothing twice, when the bot is SIGKILLed again and again (issue 10).

Three processes: the fake Discord, the fake image API (each generation takes --latency s, at most
--concurrency in flight) and the bot (`python -m bot run`, SQLite). --jobs /imagine with distinct
prompts (no cache hit, no shared flight) from --users users in --guilds guilds are pushed at a
steady rate while the bot is up. The bot is SIGKILLed --kills times, each time after an uptime
drawn (seeded by --seed) from [--min-up, --max-up] s once it is connected, so the kills land
anywhere: in an admission, a queued job, a request in flight, a download, a delivery. It is
restarted at once on the same SQLite file. After the last kill the bot runs until every job has
ended, then gets a SIGTERM.

Around each kill (the bot dead, before the restart): the pushes pause; the fake image API's
in-flight count *at the kill* is read from its request log (`GET /_requests`: requests of this
life received before the bot was reaped and answered after the kill, or never); the store's jobs in
`submitting` are counted (the bot's own view of its requests in flight); and every interaction
pushed in this life that has no job row is pushed again as a new interaction (Discord told that
user "the application did not respond": they try again). So each of the --jobs requests is
admitted exactly once.

At the end, for each job (a row of the store):
- delivered: exactly one Discord message carries its image (the fake Discord's messages, whose
  interaction id is the job's or whose buttons carry its id, with a create or an edit that
  uploaded a file). A second such message is a duplicate; none is a loss. The same message edited
  with the image again (a delivery retried after a kill) is counted apart: the user sees one image.
- failed: charged nothing (cost 0) and its reservations given back: every quota counter of the
  store equals what the delivered jobs reserved (user images per day and month, guild fen per day
  and month; the limits are set high but not off, so every job reserves).
- anything else (still queued, submitting or generated, or no job row for an admitted request)
  is lost.
Extra generations = the fake image API's generations - delivered jobs; goal: no more than the
requests in flight at the kills (the README's promise: a crash costs at most one extra generation
per request in flight).

Also printed: how long a restarted bot took to connect and to send its first generation request
(a dead process's permits in the shared upstream budget hold their slots until their lease, up to
10 s, runs out: its requests may still be generating at the provider), and each extra generation's
job.

The run has a hard deadline (--deadline, 280 s by default): past it the processes are stopped
and the run fails. `--jobs 40 --kills 5` is a quick run.

    .venv/bin/python -m bench.crash [--jobs 200] [--kills 20] [--seed 10] [--latency 1] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import Deadline, bench_settings, hard_deadline, http, slash, start, start_bot, stop, wait_until

BUTTON = re.compile(r"^imagine:\w+:(\d+)$")


@dataclass
class Kill:
    uptime: float  # planned seconds between the bot's connection and the kill
    at: float = 0.0  # time.monotonic() just before the SIGKILL
    in_flight: int = 0  # at the fake image API at the kill
    submitting: int = 0  # jobs the store had in `submitting` at the kill
    repushed: int = 0  # interactions of that life with no job row, pushed again
    restart_s: float = 0.0  # from the restart to the bot's connection
    restarted_at: float = 0.0  # time.monotonic() when the next process was started
    in_flight_prompts: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    jobs: int = 0  # rows of the store for the bench's requests
    requests: int = 0
    delivered: int = 0
    failed: int = 0
    lost: list[str] = field(default_factory=list)  # job id: why
    duplicated: list[str] = field(default_factory=list)
    redelivered: int = 0  # jobs whose one message was edited with the image more than once
    failed_unrefunded: list[str] = field(default_factory=list)
    counter_mismatches: list[str] = field(default_factory=list)
    generations: int = 0
    generation_counts: dict[str, int] = field(default_factory=dict)  # prompt -> generations at the fake
    extra_jobs: list[str] = field(default_factory=list)  # jobs generated more than once (or failed after one)
    failure_codes: collections.Counter[str] = field(default_factory=collections.Counter)
    refused: int = 0  # answered with a private refusal

    @property
    def extra(self) -> int:
        return self.generations - self.delivered


@dataclass
class Result:
    args: argparse.Namespace
    kills: list[Kill] = field(default_factory=list)
    outcome: Outcome = field(default_factory=Outcome)
    pushes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    workdir: Path | None = None
    first_request_s: list[float | None] = field(default_factory=list)  # restart -> its first request at the fake

    @property
    def in_flight(self) -> int:
        return sum(k.in_flight for k in self.kills)

    @property
    def complete(self) -> bool:
        return len(self.kills) == self.args.kills and self.outcome.jobs == self.args.jobs

    @property
    def intact(self) -> bool:
        o = self.outcome
        return (
            self.complete
            and not o.lost
            and not o.duplicated
            and not o.failed_unrefunded
            and not o.counter_mismatches
            and o.delivered + o.failed == o.jobs
        )

    @property
    def frugal(self) -> bool:
        return self.complete and self.outcome.extra <= self.in_flight

    @property
    def passed(self) -> bool:
        return self.intact and self.frugal


# -- pushing the requests ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    n: int
    guild_id: int
    user_id: int

    def prompt(self, attempt: int) -> str:
        return f"crash job {self.n}" + (f" retry {attempt}" if attempt else "")


class Pusher(threading.Thread):
    """Pushes the requests at a steady rate while `up` is set; a request pushed to a bot that died
    before writing its job is pushed again (`retry`), as a new interaction with its own prompt."""

    def __init__(self, control: str, requests: list[Request], rate: float) -> None:
        super().__init__(daemon=True, name="pusher")
        self._control, self._rate = control, rate
        self._todo: collections.deque[tuple[Request, int]] = collections.deque((r, 0) for r in requests)
        self._lock = threading.Lock()
        self.up = threading.Event()
        self._idle = threading.Event()
        self._halt = threading.Event()
        self.life: list[str] = []  # interaction ids pushed since the last `new_life`
        self.pushed: dict[str, tuple[Request, int]] = {}  # every interaction id -> request, attempt
        self.failed_pushes = 0

    def run(self) -> None:
        due = time.monotonic()
        while not self._halt.is_set():
            self._idle.set()
            if not self.up.wait(0.1):
                continue
            self._idle.clear()
            if not self.up.is_set():
                continue
            with self._lock:
                job = self._todo.popleft() if self._todo else None
            if job is None:
                self._halt.wait(0.05)
                continue
            request, attempt = job
            time.sleep(max(0.0, due - time.monotonic()))
            if not self.up.is_set():  # paused meanwhile: not now
                with self._lock:
                    self._todo.appendleft(job)
                continue
            try:
                key, _ = slash(self._control, request.prompt(attempt), request.guild_id, request.user_id)
            except OSError:  # the fake Discord refused (no bot connected yet): try again soon
                self.failed_pushes += 1
                with self._lock:
                    self._todo.appendleft(job)
                self._halt.wait(0.1)
                continue
            with self._lock:
                self.pushed[key] = job
                self.life.append(key)
            due = max(due + 1.0 / self._rate, time.monotonic() - 1.0)

    def pause(self) -> None:
        """Stop pushing and wait until no push is under way."""
        self.up.clear()
        self._idle.wait(15)

    def new_life(self) -> list[str]:
        with self._lock:
            life, self.life = self.life, []
        return life

    def retry(self, key: str) -> None:
        with self._lock:
            request, attempt = self.pushed[key]
            self._todo.appendleft((request, attempt + 1))

    @property
    def done(self) -> bool:
        with self._lock:
            return not self._todo

    def stop(self) -> None:
        self._halt.set()
        self.up.set()
        self.join(15)


# -- the run -------------------------------------------------------------------------------------------
def read_store(database: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """A read-only look at the bot's SQLite file (WAL: it does not stop the bot's writes)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
        return db.execute(sql, args).fetchall()


def run(args: argparse.Namespace) -> Result:
    result = Result(args)
    rng = random.Random(args.seed)
    result.kills = [Kill(rng.uniform(args.min_up, args.max_up)) for _ in range(args.kills)]
    print(
        f"crash, on {os.cpu_count()} core(s): {args.jobs} /imagine (distinct prompts, {args.users} users in"
        f" {args.guilds} guilds); the bot SIGKILLed {args.kills} times after {args.min_up:g}-{args.max_up:g} s up"
        f" (seed {args.seed}) and restarted on the same SQLite file; upstream {args.concurrency} in flight,"
        f" {args.latency:g} s per image",
        flush=True,
    )
    began = time.monotonic()
    try:
        with hard_deadline(args.deadline):
            _run(result, lambda: args.deadline - (time.monotonic() - began))
    except Deadline as exc:
        result.notes.append(str(exc))
    result.seconds = time.monotonic() - began
    print(header())
    print(*rows(result), sep="\n")
    print(details(result), flush=True)
    return result


def _run(result: Result, left: Callable[[], float]) -> None:
    args = result.args
    began = time.monotonic()
    discord_proc = image_proc = bot = None
    pusher: Pusher | None = None
    try:
        discord_proc, (api_base, gateway) = start(
            "tests.fakes.fake_discord", "--guilds", str(args.guilds), "--max-recorded-requests", "100",
            marker="FAKE_DISCORD",
        )  # fmt: skip
        image_proc, (image_base,) = start(
            "tests.fakes.image_api", "--latency", str(args.latency), "--concurrency", str(args.concurrency),
            marker="FAKE_IMAGE_API",
        )  # fmt: skip
        control = api_base.split("/api/")[0] + "/_control"
        fake_root = image_base.removesuffix("/v1")
        settings = bench_settings(
            image_base,
            discord_api_base=api_base,
            discord_gateway_url=gateway,
            upstream_concurrency=args.concurrency,
            upstream_rpm=6000,
            guild_queue_max=1000,
            user_pending_max=100,
            # high but not off: every job reserves, so a refund can be checked
            user_daily_limit=100_000,
            user_monthly_limit=1_000_000,
            guild_daily_budget_cny=100_000,
            guild_monthly_budget_cny=1_000_000,
            shutdown_grace_s=10,
        )
        database = settings.database_path
        result.workdir = database.parent

        def launch(life: int) -> subprocess.Popen[bytes]:
            process = start_bot(settings, result.workdir / f"bot-{life}.log")  # type: ignore[operator]

            def ready() -> bool:
                if process.poll() is not None:
                    raise RuntimeError(f"the bot exited with {process.returncode}; see {result.workdir}")
                state: dict[str, Any] = http("GET", control + "/state")  # type: ignore[assignment]
                return state["ready"] and state["identify_count"] > life  # this process's session

            if not wait_until(ready, min(60, left()), 0.05):
                raise RuntimeError(f"the bot did not connect; see {result.workdir}")
            return process

        bot = launch(0)
        guild_ids = [int(g["id"]) for g in http("GET", control + "/state")["guilds"]]  # type: ignore[index]
        requests = [
            Request(n, guild_ids[n % args.users % len(guild_ids)], 300_000 + n % args.users) for n in range(args.jobs)
        ]
        uptime = sum(kill.uptime for kill in result.kills)
        rate = args.rate or (max(1.0, args.jobs / (0.8 * uptime)) if uptime else args.jobs / 10.0)
        pusher = Pusher(control, requests, rate)
        pusher.start()
        pusher.up.set()
        life_began = time.monotonic()
        launched = began  # when this life's process was started: it may send requests before it connects
        for life, kill in enumerate(result.kills, 1):
            time.sleep(max(0.0, kill.uptime - (time.monotonic() - life_began)))
            kill.at = time.monotonic()
            bot.kill()
            bot.wait()
            pusher.pause()
            time.sleep(0.2)  # a request the bot wrote just before it died reaches the fake
            _after_kill(kill, fake_root, database, pusher, launched)
            launched = kill.restarted_at = time.monotonic()
            bot = launch(life)
            life_began = time.monotonic()
            kill.restart_s = life_began - launched
            pusher.up.set()
        # the last life: every request admitted, then every job ended
        wait_until(lambda: pusher.done, max(1.0, left() - 30), 0.2)
        wait_until(lambda: _admitted(database) >= args.jobs and _unfinished(database) == 0, max(1.0, left() - 20), 0.5)
        pusher.pause()
        stop(bot)
        messages: list[dict[str, Any]] = http("GET", control + "/messages")  # type: ignore[assignment]
        log: list[dict[str, Any]] = http("GET", fake_root + "/_requests")  # type: ignore[assignment]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)  # the hard deadline must not cut the clean-up short
        if pusher is not None:
            pusher.stop()
        if bot is not None:
            stop(bot)
        for process in (discord_proc, image_proc):
            if process is not None:
                stop(process, 10)
    result.pushes = len(pusher.pushed)
    result.outcome = judge(database, messages, log, pusher.pushed)
    result.first_request_s = first_requests(result.kills, log)


def _after_kill(kill: Kill, fake_root: str, database: Path, pusher: Pusher, launched: float) -> None:
    """The bot is dead: what was in flight at the kill, and who must try again."""
    log: list[dict[str, Any]] = http("GET", fake_root + "/_requests")  # type: ignore[assignment]
    # this life's requests (the fake's clock is this machine's time.monotonic()) not answered at the kill
    kill.in_flight_prompts = [
        r["prompt"]
        for r in log
        if r["received_at"] >= launched and (r["answered_at"] is None or r["answered_at"] > kill.at)
    ]
    kill.in_flight = len(kill.in_flight_prompts)
    kill.submitting = read_store(database, "SELECT COUNT(*) FROM jobs WHERE state = 'submitting'")[0][0]
    life = pusher.new_life()
    if life:
        marks = ",".join("?" * len(life))
        ids = tuple(int(key) for key in life)
        written = {str(row[0]) for row in read_store(database, f"SELECT id FROM jobs WHERE id IN ({marks})", ids)}
        for key in life:
            if key not in written:
                pusher.retry(key)
                kill.repushed += 1


def _admitted(database: Path) -> int:
    return read_store(database, "SELECT COUNT(*) FROM jobs WHERE prompt LIKE 'crash job %'")[0][0]


def _unfinished(database: Path) -> int:
    return read_store(database, "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'submitting', 'generated')")[0][0]


# -- the verdict -----------------------------------------------------------------------------------------
def judge(database: Path, messages: list[dict[str, Any]], log: list[dict[str, Any]], pushed: dict[str, Any]) -> Outcome:
    """Every job delivered once, or failed and refunded; the extra generations."""
    out = Outcome(requests=len({request.n for request, _ in pushed.values()}))
    images: dict[str, set[str]] = collections.defaultdict(set)  # job id -> messages that carried its image
    uploads: collections.Counter[str] = collections.Counter()  # job id -> creates/edits with a file
    for message in messages:
        owners = {m.group(1) for c in _custom_ids(message["components"]) if (m := BUTTON.match(c))}
        if message["interaction_id"]:
            owners.add(message["interaction_id"])
        carried = sum(1 for op in message["history"] if op["files"])
        for owner in owners:
            if carried:
                images[owner].add(message["id"])
                uploads[owner] += carried
            elif message["flags"] & 64 and owner == message["interaction_id"] and not message["attachments"]:
                out.refused += 1
    rows = read_store(
        database,
        "SELECT id, prompt, state, cost_fen, quota_json, error_code FROM jobs WHERE prompt LIKE 'crash job %'",
    )
    generations = collections.Counter(r["prompt"] for r in log if r["status"] == 200)
    out.generations = sum(generations.values())
    out.generation_counts = dict(generations)
    delivered_charges: collections.Counter[tuple[str, str, str]] = collections.Counter()

    for job_id, prompt, state, cost_fen, quota_json, error_code in rows:
        key, shown = str(job_id), len(images.get(str(job_id), ()))
        out.jobs += 1
        if state == "delivered":
            out.delivered += 1
            for charge in json.loads(quota_json or "[]"):
                delivered_charges[(charge["scope"], charge["subject"], charge["period"])] += charge["amount"]
            if shown == 0:
                out.lost.append(f"{key}: delivered in the store, no message carries its image")
            elif shown > 1:
                out.duplicated.append(f"{key}: its image in {shown} messages")
            elif uploads[key] > 1:
                out.redelivered += 1
            if generations[prompt] > 1:
                out.extra_jobs.append(f"{key}: generated {generations[prompt]} times")
        elif state == "failed":
            out.failed += 1
            out.failure_codes[error_code or "?"] += 1
            if cost_fen:
                out.failed_unrefunded.append(f"{key}: failed but charged {cost_fen} fen")
            if shown:
                out.duplicated.append(f"{key}: failed, yet its image reached {shown} message(s)")
            if generations[prompt]:
                out.extra_jobs.append(f"{key}: failed ({error_code}) after {generations[prompt]} generation(s)")
        else:
            out.lost.append(f"{key}: still {state} at the end")
    counters = read_store(database, "SELECT scope, subject, period, used FROM quota_counters WHERE scope != 'cooldown'")
    seen = set()
    for scope, subject, period, used in counters:
        seen.add((scope, subject, period))
        expected = delivered_charges.get((scope, subject, period), 0)
        if used != expected:
            out.counter_mismatches.append(
                f"{scope} {subject} {period}: {used} used, delivered jobs reserved {expected}"
            )
    for key, amount in delivered_charges.items():
        if key not in seen:
            out.counter_mismatches.append(f"{' '.join(key)}: no counter, delivered jobs reserved {amount}")
    admitted_requests = {pushed[str(job_id)][0].n for job_id, *_ in rows if str(job_id) in pushed}
    for n in sorted(set(range(out.requests)) - admitted_requests):
        out.lost.append(f"request {n}: never admitted")
    return out


def first_requests(kills: list[Kill], log: list[dict[str, Any]]) -> list[float | None]:
    """For each restart: seconds until the new process's first generation request reached the fake
    (None: it sent none before it was killed in turn)."""
    out: list[float | None] = []
    for kill, after in zip(kills, kills[1:] + [None], strict=True):
        if not kill.restarted_at:
            continue
        end = after.at if after is not None else float("inf")
        first = min((r["received_at"] for r in log if kill.restarted_at <= r["received_at"] < end), default=None)
        out.append(None if first is None else first - kill.restarted_at)
    return out


def _custom_ids(components: list[dict[str, Any]]) -> Iterator[str]:
    for component in components or []:
        if "custom_id" in component:
            yield component["custom_id"]
        yield from _custom_ids(component.get("components") or [])


# -- output ----------------------------------------------------------------------------------------------
def header() -> str:
    return f"{'figure':<50}{'measured':>12}  {'goal':<14}{'baseline/limit':<36}result"


def rows(result: Result) -> list[str]:
    o, complete = result.outcome, "" if result.complete else " (incomplete)"
    lost_dup = f"{len(o.lost)} / {len(o.duplicated)}"
    return [
        f"{'jobs lost / duplicated':<50}{lost_dup:>12}  {'0 / 0':<14}"
        f"{f'{o.jobs} jobs, {len(result.kills)} SIGKILLs':<36}{'PASS' if result.intact else 'FAIL'}{complete}",
        f"{'extra upstream generations':<50}{o.extra:>12}  {'<= in flight':<14}"
        f"{f'{result.in_flight} requests in flight at the kills':<36}{'PASS' if result.frugal else 'FAIL'}{complete}",
    ]


def details(result: Result) -> str:
    o = result.outcome
    lines = [
        f"  {o.jobs} jobs for {o.requests} requests ({result.pushes} interactions pushed,"
        f" {sum(k.repushed for k in result.kills)} pushed again after reaching a dying bot); {o.delivered} delivered"
        f" once, {o.failed} failed and refunded ({', '.join(f'{c}: {n}' for c, n in o.failure_codes.items()) or '-'});"
        f" {o.refused} refused; {o.redelivered} delivered into the same message twice (one image for the user)",
        f"  {o.generations} generations at the fake for {o.delivered} delivered; at the kills: {result.in_flight}"
        f" requests in flight at the fake, {sum(k.submitting for k in result.kills)} jobs marked submitting in the"
        f" store (sent, or resumed and waiting to be sent again)",
    ]
    regenerated = _in_flight_not_regenerated(result)
    if regenerated:
        lines.append(f"  in flight at a kill, yet generated only once: {', '.join(regenerated)}")
    firsts = sorted(t for t in result.first_request_s if t is not None)
    if result.first_request_s:
        silent = len(result.first_request_s) - len(firsts)
        lines.append(
            f"  after a restart, the first generation request: median {statistics.median(firsts or [0]):.1f} s,"
            f" max {max(firsts, default=0):.1f} s; {silent} of {len(result.first_request_s)} restarted processes"
            f" sent none before the next kill (a dead process's permits hold their slots until their lease runs out)"
        )
    if result.kills and result.kills[0].at:
        restarts = sorted(k.restart_s for k in result.kills if k.restart_s)
        if restarts:
            lines.append(
                f"  restart to connected: median {restarts[len(restarts) // 2]:.1f} s, max {restarts[-1]:.1f} s;"
                f" in flight at each kill: {' '.join(str(k.in_flight) for k in result.kills)}"
            )
    lines.append(f"  whole run {result.seconds:.0f} s; logs in {result.workdir}")
    for what, items in (
        ("lost", o.lost),
        ("duplicated", o.duplicated),
        ("charged though failed", o.failed_unrefunded),
        ("quota counter", o.counter_mismatches),
        ("extra generation", o.extra_jobs),
    ):
        lines += [f"  {what}: {item}" for item in items[:20]]
        if len(items) > 20:
            lines.append(f"  {what}: ... {len(items) - 20} more")
    lines += [f"  note: {note}" for note in result.notes]
    return "\n".join(lines)


def _in_flight_not_regenerated(result: Result) -> list[str]:
    """Prompts in flight at a kill that the fake generated only once (the expected: once more)."""
    counts = result.outcome.generation_counts
    return sorted({p for k in result.kills for p in k.in_flight_prompts if counts.get(p, 0) < 2})


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="requests, each admitted once")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs")
    parser.add_argument("--seed", type=int, default=10, help="seeds the uptimes before each kill")
    parser.add_argument("--min-up", type=float, default=1.0, help="shortest uptime before a kill, s")
    parser.add_argument("--max-up", type=float, default=5.0, help="longest uptime before a kill, s")
    parser.add_argument("--rate", type=float, default=0.0, help="pushes per second (0: spread over the uptimes)")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--guilds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="generations in flight (bot and fake)")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per generation at the fake")
    parser.add_argument("--deadline", type=float, default=280.0, help="hard deadline for the whole run, s")
    return parser.parse_args(argv)


def main() -> None:
    result = run(parse())
    raise SystemExit(0 if result.passed else 1)


if __name__ == "__main__":
    main()
