"""Benchmark: does one flooding guild starve the others? (issue 10)

Three processes: the fake Discord, the fake image API (each generation takes --latency s; it
enforces --concurrency in flight and would answer 429 past it) and the bot (`python -m bot run`,
SQLite, the same concurrency as its own limit), so a backlog builds. A warm-up guild first runs
2·C generations (the limiter learns how long one holds its slot). Then guild A queues --flood
/imagine (distinct prompts, from --flood-users users) at once, then guild B queues --light, then
guild C --light (one user each). Everything is delivered before the figures are taken.

Times (Unix seconds): a job is *dispatched* at its row's `started_at` in the store (millisecond
resolution), stamped as the runner marks it submitting, right after the dispatch loop took it from
the queue; the dispatch order is the `started_at` order (ties broken by the order the requests
arrived at the fake image API, its `GET /_requests`). Not the arrival times themselves: a request
arrives later than its dispatch by however busy the bot's event loop is (up to ~0.3 s here while it
admits a burst), and counting on arrivals charged a light guild with starts the bot had dispatched
before that guild even queued. A job *joins* its guild's queue just after its acknowledgement: the
fake Discord's record of the deferred reply (`created_at` of the interaction's first message); the
bot adds it to the queue once that answer is back and the reply's id is written, so this moment
is a little early and can only count more dispatches, never fewer. Not the row's `queued_at`: the
row is written before the acknowledgement, which can take a few hundred ms while the bot admits a
burst, and a job is not in the queue until it is acknowledged. A job's queue *wait* (the chart,
the waits printed) is from its `queued_at`, as its user sees it. B's and C's requests are pushed
once every one of A's has been acknowledged (A "has queued" them).

--during-burst pushes B's and C's requests right after A's, while the bot is still admitting A's
burst. Then the first figure can reach 3 or 4 and Jain's index 0.87-0.92 (here: 7 of 16 runs with
a CPU hog beside them; without --during-burst 0 of 13, 5 of them with the hog). The order is fair
once a job is in the queue, but an acknowledged job joins it only after its reply's message id is
written to the store, and during a burst that write waits behind the burst's other writes
(measured with temporary logging: 0.5-1.7 s after the acknowledgement, with the hog); meanwhile
A's jobs are dispatched ahead of it.

Figures, each over B's and C's jobs or the guilds A, B and C:

1. Dispatches from the head of its queue. A job reaches the head of its guild's queue when it
   joins it, or when the job of its guild dispatched before it is dispatched, whichever is later.
   The figure counts the other jobs dispatched after that moment and before the job itself (in
   the dispatch order; a dispatch in the same millisecond as the job's joining counts), the
   worst over B's and C's jobs. Goal <= 2: with three guilds backlogged, a guild waits for one
   turn of each of the other two (the limit it is compared with).
2. Jain's fairness index over the backlogged guilds. A guild is backlogged at the k-th dispatch
   when one of its jobs joined the queue before that dispatch's time and is the k-th dispatch or
   a later one. The span is every dispatch at which A, B and C are all backlogged. It is cut, from its
   first dispatch, into consecutive windows of 3 dispatches (one turn of the round robin; a last,
   shorter window is left out). In each window,
   J = (x_A + x_B + x_C)^2 / (3 * (x_A^2 + x_B^2 + x_C^2)), x_g the dispatches of guild g in it:
   1 when each guild had one, 1/3 when one guild had them all. The figure is the mean over the
   windows (goal >= 0.99); the worst window, and J over the span's dispatches cut to a multiple
   of 3, are printed too.

Also printed: how many consecutive dispatches arrived at the fake in the other order, how long a
request took from its dispatch to its arrival, the 429s, and each guild's queue waits. The chart
(a PNG, written by this module, default docs/benchmarks-fairness.png) shows each job's queue wait
(dispatched - queued) against the time it was dispatched, one colour per guild, the span shaded.

The whole run has a hard deadline (--deadline, 240 s by default): past it the bot and the fakes
are stopped and the run fails.

    .venv/bin/python -m bench.fairness [--flood 100] [--light 5] [--concurrency 2] [--latency 0.5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.harness import ROOT, Deadline, bench_settings, hard_deadline, http, slash, start, start_bot, stop, wait_until

GUILDS = ("A", "B", "C")  # the flooding guild, then the two light ones
MAX_HEAD_DISPATCHES = len(GUILDS) - 1  # one turn of each other backlogged guild
GOAL_JAIN = 0.99
DEFAULT_CHART = ROOT / "docs" / "benchmarks-fairness.png"
COLOURS = {"A": "#1f77b4", "B": "#ff7f0e", "C": "#2ca02c"}


@dataclass(frozen=True)
class Job:
    guild: str  # A, B or C
    prompt: str
    queued: float  # queued_at in the store, Unix seconds
    joined: float  # its acknowledgement at the fake Discord: it joins the queue just after
    dispatched: float  # started_at in the store, Unix seconds
    arrived: float  # its admitted request's arrival at the fake image API, converted to Unix seconds

    @property
    def wait(self) -> float:
        return self.dispatched - self.queued


@dataclass
class Result:
    flood: int
    light: int
    concurrency: int
    latency: float
    jobs: list[Job] = field(default_factory=list)  # in dispatch order once analysed
    origin: float = 0.0  # A's first queued_at (Unix seconds)
    delivered: int = 0
    expected: int = 0
    rate_limited: int = 0
    head_dispatches: dict[str, int] = field(default_factory=dict)  # B's and C's prompts -> figure 1
    windows: list[tuple[int, ...]] = field(default_factory=list)  # dispatches per guild in each window
    span: tuple[float, float] | None = None  # the span's first and last dispatch (Unix seconds)
    span_counts: tuple[int, ...] = ()
    inversions: int = 0
    fifo: dict[str, float] = field(default_factory=dict)  # prompt -> dispatch time under first come, first served
    notes: list[str] = field(default_factory=list)
    log_path: Path | None = None

    @property
    def worst_head(self) -> int:
        return max(self.head_dispatches.values(), default=-1)

    @property
    def jain(self) -> float:
        return statistics.fmean(jain(w) for w in self.windows) if self.windows else 0.0

    @property
    def complete(self) -> bool:
        return self.delivered == self.expected and len(self.jobs) == self.expected

    @property
    def passed(self) -> bool:
        return (
            self.complete
            and 0 <= self.worst_head <= MAX_HEAD_DISPATCHES
            and self.jain >= GOAL_JAIN
            and self.rate_limited == 0
        )


def jain(counts: tuple[int, ...] | list[int]) -> float:
    """Jain's fairness index of a set of shares: 1 when equal, 1/n when one has everything."""
    total, squares = sum(counts), sum(c * c for c in counts)
    return total * total / (len(counts) * squares) if squares else 1.0


# -- the figures, from the jobs alone (pure) ------------------------------------------------------
def dispatch_order(jobs: list[Job]) -> list[Job]:
    """By started_at, ties (the same millisecond) by arrival at the fake."""
    return sorted(jobs, key=lambda j: (j.dispatched, j.arrived))


def head_dispatches(order: list[Job], guilds: tuple[str, ...] = ("B", "C")) -> dict[str, int]:
    """Figure 1 for each job of `guilds` (`order`: every job in dispatch order): the other jobs
    dispatched from the moment it headed its guild's queue until its own dispatch."""
    out: dict[str, int] = {}
    for guild in guilds:
        previous: int | None = None
        for k, job in enumerate(order):
            if job.guild != guild:
                continue
            if previous is not None and order[previous].dispatched >= job.joined:
                out[job.prompt] = k - previous - 1  # it headed the queue when the previous one left
            else:  # it headed the queue as it joined it
                out[job.prompt] = sum(1 for other in order[:k] if other.dispatched >= job.joined)
            previous = k
    return out


def backlogged_span(order: list[Job]) -> list[Job]:
    """The dispatches at which every guild is backlogged (a job that joined before it, dispatched then or later)."""

    def backlogged(guild: str, k: int) -> bool:
        return any(j.guild == guild and j.joined < order[k].dispatched for j in order[k:])

    return [job for k, job in enumerate(order) if all(backlogged(g, k) for g in GUILDS)]


def windows(span: list[Job], size: int = len(GUILDS)) -> list[tuple[int, ...]]:
    """The span cut into consecutive windows of `size` dispatches (a shorter last one left out):
    each window's dispatches per guild."""
    return [
        tuple(sum(1 for j in span[i : i + size] if j.guild == g) for g in GUILDS)
        for i in range(0, len(span) - size + 1, size)
    ]


def first_come_first_served(order: list[Job]) -> dict[str, float]:
    """The counterfactual baseline: each job's dispatch time had the same dispatches gone in the
    order the jobs joined the queue (one queue for everyone, no turns)."""
    slots = [job.dispatched for job in order]
    by_arrival = sorted(order, key=lambda j: (j.joined, j.dispatched))
    return {job.prompt: max(slot, job.joined) for job, slot in zip(by_arrival, slots, strict=True)}


def order_inversions(order: list[Job]) -> int:
    """Consecutive dispatches whose requests arrived at the fake the other way round."""
    return sum(1 for a, b in zip(order, order[1:], strict=False) if a.arrived > b.arrived)


def analyse(result: Result) -> None:
    order = result.jobs = dispatch_order(result.jobs)
    result.origin = min((j.queued for j in order if j.guild == "A"), default=0.0)
    result.head_dispatches = head_dispatches(order)
    span = backlogged_span(order)
    result.windows = windows(span)
    whole = span[: len(span) // len(GUILDS) * len(GUILDS)]
    result.span_counts = tuple(sum(1 for j in whole if j.guild == g) for g in GUILDS)
    result.span = (span[0].dispatched, span[-1].dispatched) if span else None
    result.inversions = order_inversions(order)
    result.fifo = first_come_first_served(order)


# -- the run ---------------------------------------------------------------------------------------
def acknowledged(control: str, ids: set[str]) -> int:
    messages: list[dict[str, Any]] = http("GET", control + "/messages")  # type: ignore[assignment]
    return len({m["interaction_id"] for m in messages if m["interaction_id"] in ids})


def delivered(control: str, ids: set[str]) -> int:
    messages: list[dict[str, Any]] = http("GET", control + "/messages")  # type: ignore[assignment]
    return len({m["interaction_id"] for m in messages if m["interaction_id"] in ids and m["attachments"]})


def run(
    *,
    flood: int = 100,
    light: int = 5,
    flood_users: int = 5,
    concurrency: int = 2,
    latency: float = 0.5,
    deadline: float = 240.0,
    chart: Path | None = DEFAULT_CHART,
    during_burst: bool = False,
) -> Result:
    """One run on fresh processes and a fresh store; prints the rows and details, writes the chart."""
    result = Result(flood, light, concurrency, latency, expected=flood + 2 * light)
    print(
        f"fairness, on {os.cpu_count()} core(s): the bot, the fake Discord and the fake image API in processes of"
        f" their own; upstream {concurrency} in flight, {latency:g} s per image; guild A queues {flood} (from"
        f" {flood_users} users), then B and C {light} each",
        flush=True,
    )
    began = time.monotonic()
    try:
        with hard_deadline(deadline):
            _measure(result, flood_users, during_burst, lambda: deadline - (time.monotonic() - began))
    except Deadline as exc:
        result.notes.append(str(exc))
    if result.jobs:
        analyse(result)
        if chart is not None:
            draw_chart(result, chart)
            result.notes.append(f"chart written to {chart}")
    print(header())
    print(*rows(result), sep="\n")
    print(details(result), flush=True)
    return result


def _measure(result: Result, flood_users: int, during_burst: bool, left: Any) -> None:
    discord_proc = image_proc = bot = None
    try:
        discord_proc, (api_base, gateway) = start(
            "tests.fakes.fake_discord", "--guilds", str(len(GUILDS) + 1), "--max-recorded-requests", "2000",
            marker="FAKE_DISCORD",
        )  # fmt: skip
        image_proc, (image_base,) = start(
            "tests.fakes.image_api", "--latency", str(result.latency), "--concurrency", str(result.concurrency),
            marker="FAKE_IMAGE_API",
        )  # fmt: skip
        control = api_base.split("/api/")[0] + "/_control"
        fake_root = image_base.removesuffix("/v1")
        settings = bench_settings(
            image_base,
            discord_api_base=api_base,
            discord_gateway_url=gateway,
            upstream_concurrency=result.concurrency,
            upstream_rpm=6000,  # not the bound: the concurrency is
            guild_queue_max=1000,
            user_pending_max=100,
            shutdown_grace_s=5,
        )
        result.log_path = settings.database_path.parent / "bot.log"
        bot = start_bot(settings, result.log_path)

        def ready() -> dict[str, Any] | None:
            if bot.poll() is not None:
                raise RuntimeError(f"the bot exited with {bot.returncode}; see {result.log_path}")
            state: dict[str, Any] = http("GET", control + "/state")  # type: ignore[assignment]
            return state if state["ready"] else None

        state = wait_until(ready, min(60, left()))
        if not state:
            raise RuntimeError(f"the bot did not connect; see {result.log_path}")
        time.sleep(2.5)  # discord.py waits guild_ready_timeout (2 s) after the last GUILD_CREATE
        *guild_ids, warm_guild = [int(g["id"]) for g in state["guilds"]]
        by_guild = dict(zip(GUILDS, guild_ids, strict=True))

        # the warm-up: the limiter learns how long a generation holds its slot (else it assumes 15 s)
        warm_prompts = [f"fairness warm-up {n}" for n in range(2 * result.concurrency)]
        warm = {slash(control, prompt, warm_guild, 700_000 + n)[0] for n, prompt in enumerate(warm_prompts)}
        if not wait_until(lambda: delivered(control, warm) == len(warm), min(60, left())):
            result.notes.append("the warm-up was not fully delivered")

        # the flood, then the light guilds: their prompts say whose they are
        flood = {
            slash(control, f"fairness A {n}", by_guild["A"], 100_000 + n % flood_users)[0] for n in range(result.flood)
        }
        if during_burst:
            result.notes.append("B and C pushed during A's burst, without waiting for its acknowledgements")
        elif not wait_until(lambda: acknowledged(control, flood) == len(flood), min(30, left()), 0.05):
            result.notes.append("not every one of A's requests was acknowledged before B and C queued theirs")
        light = [(g, n, 200_000 + k) for k, g in enumerate(("B", "C")) for n in range(result.light)]
        ids = flood | {slash(control, f"fairness {g} {n}", by_guild[g], user)[0] for g, n, user in light}
        expected_s = result.expected * result.latency / result.concurrency
        wait_until(lambda: delivered(control, ids) == len(ids), max(1.0, min(expected_s * 3 + 30, left() - 20)), 0.5)
        result.delivered = delivered(control, ids)
        requests: list[dict[str, Any]] = http("GET", fake_root + "/_requests")  # type: ignore[assignment]
        messages: list[dict[str, Any]] = http("GET", control + "/messages")  # type: ignore[assignment]
        offset = time.time() - time.monotonic()  # the fake's clock is this machine's time.monotonic()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)  # the hard deadline must not cut the clean-up short
        if bot is not None:
            stop(bot)
        for process in (discord_proc, image_proc):
            if process is not None:
                stop(process, 10)
    result.rate_limited = sum(1 for r in requests if r["status"] == 429)
    result.jobs = _jobs(settings.database_path, requests, offset, messages)


def _jobs(database: Path, requests: list[dict[str, Any]], offset: float, messages: list[dict[str, Any]]) -> list[Job]:
    """A, B and C's jobs: queued_at and started_at from the store, the acknowledgement from the fake
    Discord's messages, the arrival from the fake image API's log."""
    arrived: dict[str, float] = {}
    for request in requests:
        if request["status"] == 200 and request["prompt"] not in arrived:
            arrived[request["prompt"]] = request["received_at"] + offset
    acknowledged: dict[str, float] = {}
    for message in messages:
        key = message["interaction_id"]
        if key is not None:
            acknowledged[key] = min(acknowledged.get(key, message["created_at"]), message["created_at"])
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT id, prompt, queued_at, started_at FROM jobs WHERE prompt LIKE 'fairness %'"
        ).fetchall()
    jobs = []
    for job_id, prompt, queued_at, started_at in rows:
        guild = prompt.split()[1]
        if guild in GUILDS and started_at and prompt in arrived and str(job_id) in acknowledged:
            queued, dispatched = datetime.fromisoformat(queued_at), datetime.fromisoformat(started_at)
            joined = acknowledged[str(job_id)]
            jobs.append(Job(guild, prompt, queued.timestamp(), joined, dispatched.timestamp(), arrived[prompt]))
    return jobs


# -- output ----------------------------------------------------------------------------------------
def header() -> str:
    return f"{'figure':<58}{'measured':>10}  {'goal':<9}{'baseline/limit':<40}result"


def rows(result: Result) -> list[str]:
    complete = "" if result.complete else " (incomplete)"
    head_ok = 0 <= result.worst_head <= MAX_HEAD_DISPATCHES and result.complete
    jain_ok = result.jain >= GOAL_JAIN and result.complete
    jain_figure = "Jain's index over backlogged guilds (A, B, C)"
    return [
        f"{'dispatches before a B/C job, once it heads its queue':<58}{result.worst_head:>10}"
        f"  {'<= 2':<9}{'2 = one turn of each other guild':<40}{'PASS' if head_ok else 'FAIL'}{complete}",
        f"{jain_figure:<58}{result.jain:>10.3f}"
        f"  {'>= 0.99':<9}{'1 = equal shares, 1/3 = one takes all':<40}{'PASS' if jain_ok else 'FAIL'}{complete}",
    ]


def details(result: Result) -> str:
    lines = []
    by = {g: [j for j in result.jobs if j.guild == g] for g in GUILDS}
    counts = [result.head_dispatches.get(j.prompt, -1) for g in ("B", "C") for j in by[g]]
    spread = ", ".join(f"{n}: {counts.count(n)}" for n in sorted(set(counts)))
    lines.append(f"  B's and C's {len(counts)} jobs by dispatches from their queue head: {spread or 'none'}")
    if result.span is not None:
        worst = min((jain(w) for w in result.windows), default=0.0)
        lines.append(
            f"  span (A, B and C backlogged): {result.span[1] - result.span[0]:.1f} s, {len(result.windows)}"
            f" windows of 3 dispatches, worst window {worst:.3f}; over the span's first {sum(result.span_counts)}"
            f" dispatches: A/B/C {'/'.join(map(str, result.span_counts))}, J = {jain(result.span_counts):.3f}"
        )
    for g in GUILDS:
        waits = sorted(j.wait for j in by[g])
        fifo = sorted(result.fifo[j.prompt] - j.queued for j in by[g] if j.prompt in result.fifo)
        if waits:
            lines.append(
                f"  guild {g}: {len(waits)} jobs, queue wait median {statistics.median(waits):.1f} s,"
                f" max {waits[-1]:.1f} s (first come, first served on the same dispatches:"
                f" median {statistics.median(fifo):.1f} s, max {fifo[-1]:.1f} s)"
            )
    transit = sorted(j.arrived - j.dispatched for j in result.jobs)
    if transit:
        lines.append(
            f"  dispatch (started_at) to arrival at the fake: median {statistics.median(transit) * 1000:.0f} ms,"
            f" max {transit[-1] * 1000:.0f} ms (clock offset estimated); {result.inversions} consecutive"
            f" dispatches arrived in the other order"
        )
    lines.append(f"  {result.delivered}/{result.expected} delivered; {result.rate_limited} 429s from the fake")
    if result.log_path is not None:
        lines.append(f"  bot log: {result.log_path}")
    lines += [f"  note: {note}" for note in result.notes]
    return "\n".join(lines)


def draw_chart(result: Result, path: Path) -> None:
    """Queue wait per guild against the time each job was dispatched (a PNG; matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=100)
    if result.span is not None:
        ax.axvspan(
            result.span[0] - result.origin,
            result.span[1] - result.origin,
            color="#dddddd",
            label="A, B and C all backlogged",
        )
    for g in GUILDS:
        jobs = [j for j in result.jobs if j.guild == g]
        ax.scatter(
            [j.dispatched - result.origin for j in jobs],
            [j.wait for j in jobs],
            s=14 if g == "A" else 36,
            color=COLOURS[g],
            marker="o" if g == "A" else "D",
            label=f"guild {g} ({len(jobs)} jobs)",
            zorder=3,
        )
    for g in GUILDS[1:]:  # the baseline: where B's and C's jobs would have stood in one queue for all
        jobs = [j for j in result.jobs if j.guild == g and j.prompt in result.fifo]
        ax.scatter(
            [result.fifo[j.prompt] - result.origin for j in jobs],
            [result.fifo[j.prompt] - j.queued for j in jobs],
            s=36,
            facecolors="none",
            edgecolors=COLOURS[g],
            marker="D",
            label=f"guild {g} if first come, first served (same dispatches)",
            zorder=3,
        )
    ax.set_xlabel("when the job was dispatched upstream, s after guild A queued its first")
    ax.set_ylabel("queue wait (dispatched - queued), s")
    ax.set_title(
        f"Queue wait per guild: A floods {result.flood}, then B and C queue {result.light} each"
        f" (upstream {result.concurrency} in flight, {result.latency:g} s per image)",
        fontsize=10,
    )
    ax.grid(True, color="#eeeeee")
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=100, help="jobs guild A queues first")
    parser.add_argument("--light", type=int, default=5, help="jobs guilds B and C queue each, after A")
    parser.add_argument("--flood-users", type=int, default=5, help="users sending A's jobs")
    parser.add_argument("--concurrency", type=int, default=2, help="generations in flight (bot and fake)")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per generation at the fake")
    parser.add_argument("--deadline", type=float, default=240.0, help="hard deadline for the whole run, seconds")
    parser.add_argument("--chart", type=Path, default=DEFAULT_CHART, help="where to write the PNG")
    parser.add_argument("--no-chart", action="store_true", help="write no chart")
    parser.add_argument(
        "--during-burst",
        action="store_true",
        help="push B's and C's requests while A's are still being admitted (see the docstring)",
    )
    args = parser.parse_args()
    result = run(
        flood=args.flood,
        light=args.light,
        flood_users=args.flood_users,
        concurrency=args.concurrency,
        latency=args.latency,
        deadline=args.deadline,
        chart=None if args.no_chart else args.chart,
        during_burst=args.during_burst,
    )
    raise SystemExit(0 if result.passed else 1)


if __name__ == "__main__":
    main()
