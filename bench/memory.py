"""Benchmark: the bot's memory with many large images in flight, and a huge image refused.

Three processes, as in production: the fake Discord, the fake image API (serving real PNGs padded
to --image-mib MiB, each file distinct; real outputs are 2-7 MB) and the bot itself
(`python -m bot run`, configured only through its environment). Each run starts them afresh.

Load cases (--runs times each): --jobs distinct /imagine from as many users in one guild, pushed at
once, with UPSTREAM_CONCURRENCY = 8 ("8 in flight") and = the number of jobs ("32 in flight": all
generating, then downloading and uploading, together); the fake answers each generation after
--latency s. Measured from /proc/<bot pid>/status: VmRSS once the bot is idle (connected, guilds
loaded, nothing queued: the baseline), VmRSS sampled every 20 ms while the jobs run, and VmHWM (the
kernel's peak, which misses nothing between samples) once every job is delivered. Checked through
the fake Discord: every job delivered, each attachment byte-identical to a file the fake served
(SHA-256). Goal: peak <= 250 MiB in every run.

Refusal case (--refusals jobs, in one run): the fake serves a 50 MB image (with Content-Length, and
again without one, chunked: then only the bytes read can tell) to a bot with the default
IMAGE_MAX_BYTES (10 MiB). Measured on the fake's clock: from its first byte out to the bot hanging
up; and from that first byte to the failure message at the fake Discord (same machine, clocks
related by time.time() - time.monotonic()). Checked: each job failed with ImageTooLarge, charged
nothing (cost_fen 0), and no file of it is left in CACHE_DIR. Goal: refused in < 1 s.

    .venv/bin/python -m bench.memory [--runs 5] [--jobs 32] [--image-mib 8] [--cases 8,32,refuse]
        [--env MALLOC_ARENA_MAX=2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import bench_settings, http, start, start_bot_in, stop

GOAL_PEAK_MIB = 250.0
GOAL_REFUSAL_S = 1.0
REFUSED_BYTES = 50_000_000
SAMPLE_S = 0.02


@dataclass(frozen=True)
class LoadCase:
    name: str
    concurrency: int


@dataclass
class LoadRun:
    idle_kib: int = 0
    peak_kib: int = 0  # VmHWM once every job is delivered
    sampled_kib: int = 0  # the highest VmRSS sample
    after_kib: int = 0  # VmRSS once every job is delivered
    delivered: int = 0
    identical: int = 0
    max_in_flight: int = 0  # generations in flight at the fake at once
    seconds: float = 0.0  # first push to last delivery
    notes: list[str] = field(default_factory=list)


@dataclass
class Refusal:
    chunked: bool
    hang_up_s: float | None  # the fake's first byte out -> the bot hung up
    shown_s: float | None  # the fake's first byte out -> the failure message at the fake Discord
    sent: int  # bytes the fake got into the socket before the hang-up
    state: str | None
    error_code: str | None
    cost_fen: int | None


def status_kib(pid: int) -> dict[str, int]:
    """The Vm* lines of /proc/<pid>/status, in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Vm"):
                key, value = line.split(":", 1)
                values[key] = int(value.split()[0])
    return values


class RssSampler(threading.Thread):
    """VmRSS of a process every SAMPLE_S seconds; the highest seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True, name="rss")
        self._pid = pid
        self._halt = threading.Event()
        self.highest = 0

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_S):
            try:
                self.highest = max(self.highest, status_kib(self._pid)["VmRSS"])
            except (OSError, KeyError):
                return  # the process is gone

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


class Fakes:
    """The fake Discord and the fake image API, each in a process of its own."""

    def __init__(self, image_args: list[str]) -> None:
        self.discord, (self.api_base, self.gateway) = start(
            "tests.fakes.fake_discord", "--max-recorded-requests", "100", marker="FAKE_DISCORD"
        )
        try:
            self.image, (self.image_base,) = start("tests.fakes.image_api", *image_args, marker="FAKE_IMAGE_API")
        except BaseException:
            stop(self.discord, 10)
            raise
        self.control = self.api_base.split("/api/")[0] + "/_control"
        self.stats_url = self.image_base.removesuffix("/v1") + "/_stats"

    def messages(self, ids: set[str]) -> dict[str, list[dict[str, Any]]]:
        """Interaction id -> its messages, for these interactions."""
        found: dict[str, list[dict[str, Any]]] = {}
        for message in http("GET", self.control + "/messages"):  # type: ignore[union-attr]
            if message["interaction_id"] in ids:
                found.setdefault(message["interaction_id"], []).append(message)
        return found

    def stats(self) -> dict[str, Any]:
        return http("GET", self.stats_url)  # type: ignore[return-value]

    def stop(self) -> None:
        stop(self.discord, 10)
        stop(self.image, 10)


class BotProcess:
    """`python -m bot run` against the fakes, in a fresh temp folder (SQLite, CACHE_DIR, log)."""

    def __init__(self, fakes: Fakes, env: dict[str, str], **overrides: Any) -> None:
        self.settings = bench_settings(
            fakes.image_base,
            discord_api_base=fakes.api_base,
            discord_gateway_url=fakes.gateway,
            guild_queue_max=1000,
            user_pending_max=100,
            shutdown_grace_s=5,
            **overrides,
        )
        self.workdir = self.settings.cache_dir.parent
        self.log_path = self.workdir / "bot.log"
        self.process = start_bot_in(self.settings, self.log_path, self.workdir, env)
        self._fakes = fakes

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 60.0) -> int:
        """Until the fake Discord has a ready bot, then the guild wait; the guild id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the bot exited with {self.process.returncode}; see {self.log_path}")
            state: dict[str, Any] = http("GET", self._fakes.control + "/state")  # type: ignore[assignment]
            if state["ready"]:
                time.sleep(2.5)  # discord.py waits guild_ready_timeout (2 s) after the last GUILD_CREATE
                return int(state["guilds"][0]["id"])
            time.sleep(0.2)
        raise RuntimeError(f"the bot did not connect; see {self.log_path}")

    def stop(self) -> int:
        return stop(self.process, 30)

    def jobs(self) -> list[sqlite3.Row]:
        with sqlite3.connect(f"file:{self.settings.database_path}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            return db.execute("SELECT id, state, error_code, cost_fen FROM jobs").fetchall()

    def files_left(self) -> list[Path]:
        root = self.settings.cache_dir
        return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []

    def remove(self) -> None:
        """Everything but the log."""
        shutil.rmtree(self.settings.cache_dir, ignore_errors=True)
        for db in self.workdir.glob(self.settings.database_path.name + "*"):
            db.unlink()


def push(fakes: Fakes, guild_id: int, prompts: list[str]) -> dict[str, float]:
    """One /imagine per prompt, each from a user of its own, all at once; interaction id -> when pushed."""

    def one(n: int) -> tuple[str, float]:
        at = time.time()
        body = {"name": "imagine", "options": {"prompt": prompts[n]}, "guild_id": guild_id, "user_id": 500_000 + n}
        sent: dict[str, Any] = http("POST", fakes.control + "/slash", body)  # type: ignore[assignment]
        return sent["id"], at

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(one, range(len(prompts))))


def run_load(case: LoadCase, *, jobs: int, image_bytes: int, latency: float, env: dict[str, str]) -> LoadRun:
    """One run of a load case on fresh processes."""
    fakes = Fakes(["--latency", str(latency), "--image-bytes", str(image_bytes)])
    result = LoadRun()
    bot: BotProcess | None = None
    sampler: RssSampler | None = None
    try:
        bot = BotProcess(fakes, env, upstream_rpm=6000, upstream_concurrency=case.concurrency)
        guild_id = bot.wait_ready()
        time.sleep(1.0)  # settle
        result.idle_kib = status_kib(bot.pid)["VmRSS"]
        sampler = RssSampler(bot.pid)
        sampler.start()
        begin = time.time()
        pushed = push(fakes, guild_id, [f"memory {case.name} {n} {begin}" for n in range(jobs)])
        deadline = time.monotonic() + 60 + jobs * latency * 2
        delivered: dict[str, list[dict[str, Any]]] = {}
        while time.monotonic() < deadline:
            found = fakes.messages(set(pushed))
            delivered = {key: [a for m in ms for a in m["attachments"]] for key, ms in found.items()}
            delivered = {key: atts for key, atts in delivered.items() if atts}
            if len(delivered) == jobs or bot.process.poll() is not None:
                break
            time.sleep(0.25)
        finished = [m["edited_at"] or m["created_at"] for ms in fakes.messages(set(delivered)).values() for m in ms]
        result.seconds = max(finished, default=begin) - begin
        sampler.stop()
        if bot.process.poll() is None:
            result.peak_kib = status_kib(bot.pid)["VmHWM"]
            result.after_kib = status_kib(bot.pid)["VmRSS"]
        else:
            result.notes.append(f"the bot exited with {bot.process.returncode}; see {bot.log_path}")
        result.sampled_kib = sampler.highest
        stats = fakes.stats()
        served = {t["sha256"] for t in stats["transfers"] if t["complete"]}
        result.delivered = len(delivered)
        result.identical = sum(1 for atts in delivered.values() if len(atts) == 1 and atts[0]["sha256"] in served)
        result.max_in_flight = stats["max_in_flight"]
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if bot is not None:
            code = bot.stop()
            if code != 0:
                result.notes.append(f"the bot exited with {code}; see {bot.log_path}")
            bot.remove()
        fakes.stop()
    return result


def run_refusals(*, count: int, chunked: bool, env: dict[str, str]) -> list[Refusal]:
    """`count` jobs whose image is 50 MB, one after the other on fresh processes; one Refusal each."""
    image_args = ["--image-bytes", str(REFUSED_BYTES), *(["--chunked"] if chunked else [])]
    fakes = Fakes(image_args)
    bot: BotProcess | None = None
    refusals: list[Refusal] = []
    try:
        bot = BotProcess(fakes, env)
        guild_id = bot.wait_ready()
        offset = time.time() - time.monotonic()  # the fake's clock is time.monotonic(), one per machine
        for n in range(count):
            [(key, _)] = push(fakes, guild_id, [f"memory refusal {n} {time.time()}"]).items()
            refusals.append(_one_refusal(fakes, bot, key, n, chunked, offset))
    finally:
        if bot is not None:
            bot.stop()
            left = bot.files_left()
            if left:
                print(f"  note: {len(left)} file(s) left in CACHE_DIR: {', '.join(str(p) for p in left[:5])}")
            bot.remove()
        fakes.stop()
    return refusals


def _one_refusal(fakes: Fakes, bot: BotProcess, key: str, n: int, chunked: bool, offset: float) -> Refusal:
    """Wait for the n-th transfer to end and the job's failure to show; what it took."""
    deadline = time.monotonic() + 60
    transfer: dict[str, Any] | None = None
    shown_at: float | None = None
    while time.monotonic() < deadline and (transfer is None or shown_at is None):
        transfers = sorted(fakes.stats()["transfers"], key=lambda t: t["started_at"])
        if len(transfers) > n and transfers[n]["ended_at"] is not None:
            transfer = transfers[n]
        replies = fakes.messages({key}).get(key, [])
        failed = [m for m in replies if m["content"].startswith("\N{CROSS MARK}")]
        shown_at = failed[0]["edited_at"] or failed[0]["created_at"] if failed else None
        time.sleep(0.05)
    job = next((j for j in bot.jobs() if str(j["id"]) == key), None)
    start_at = transfer["started_at"] if transfer else None
    return Refusal(
        chunked=chunked,
        hang_up_s=transfer["ended_at"] - start_at if transfer and start_at is not None else None,
        shown_s=shown_at - (start_at + offset) if shown_at is not None and start_at is not None else None,
        sent=transfer["sent"] if transfer else 0,
        state=job["state"] if job else None,
        error_code=job["error_code"] if job else None,
        cost_fen=job["cost_fen"] if job else None,
    )


def _mib(kib: float) -> float:
    return kib / 1024


def load_row(case: LoadCase, runs: list[LoadRun], jobs: int) -> tuple[str, bool]:
    peaks = [_mib(r.peak_kib) for r in runs]
    idle = statistics.median(_mib(r.idle_kib) for r in runs)
    complete = all(r.delivered == jobs and r.identical == jobs and not r.notes for r in runs)
    passed = complete and max(peaks) <= GOAL_PEAK_MIB
    verdict = "PASS" if passed else "FAIL" + ("" if complete else " (not all delivered intact)")
    line = (
        f"{case.name:<16}{len(runs):>5}{statistics.median(peaks):>10.0f}{max(peaks):>8.0f}"
        f"{max(peaks) - idle:>11.0f}   {'<= ' + format(GOAL_PEAK_MIB, 'g') + ' MiB':<14}{idle:>9.0f}  {verdict}"
    )
    return line, passed


def load_details(runs: list[LoadRun], jobs: int) -> list[str]:
    lines = []
    for n, r in enumerate(runs, 1):
        lines.append(
            f"  run {n}: idle {_mib(r.idle_kib):.0f} MiB, VmHWM {_mib(r.peak_kib):.0f} MiB, highest sample"
            f" {_mib(r.sampled_kib):.0f} MiB, after {_mib(r.after_kib):.0f} MiB; {r.delivered}/{jobs} delivered,"
            f" {r.identical} byte-identical; {r.max_in_flight} in flight at the fake; {r.seconds:.1f} s"
        )
        lines += [f"    note: {note}" for note in r.notes]
    return lines


def refusal_row(refusals: list[Refusal]) -> tuple[str, bool]:
    hang_ups = [r.hang_up_s for r in refusals]
    shown = [r.shown_s for r in refusals]
    uncharged = all(r.state == "failed" and r.error_code == "ImageTooLarge" and r.cost_fen == 0 for r in refusals)
    timed = all(v is not None for v in hang_ups + shown)
    worst = max((v for v in hang_ups + shown if v is not None), default=float("inf"))
    passed = bool(refusals) and uncharged and timed and worst < GOAL_REFUSAL_S
    verdict = "PASS" if passed else "FAIL" + ("" if uncharged else " (not all failed uncharged)")
    hang = max((v for v in hang_ups if v is not None), default=float("nan")) * 1000
    show = max((v for v in shown if v is not None), default=float("nan")) * 1000
    line = (
        f"{'50 MB refused':<16}{len(refusals):>5}  hang-up max {hang:.0f} ms, failure shown max {show:.0f} ms"
        f"   {'< 1 s':<8} limit IMAGE_MAX_BYTES 10 MiB  {verdict}"
    )
    return line, passed


def refusal_details(refusals: list[Refusal]) -> list[str]:
    return [
        f"  {'chunked' if r.chunked else 'Content-Length'}: hang-up after"
        f" {r.hang_up_s * 1000 if r.hang_up_s is not None else float('nan'):.1f} ms ({r.sent:,} bytes into the"
        f" socket), failure shown after {r.shown_s * 1000 if r.shown_s is not None else float('nan'):.1f} ms;"
        f" job {r.state}, {r.error_code}, cost {r.cost_fen} fen"
        for r in refusals
    ]


def run(
    *,
    runs: int = 5,
    jobs: int = 32,
    image_mib: float = 8.0,
    latency: float = 2.0,
    cases: tuple[str, ...] = ("8", "32", "refuse"),
    refusals: int = 2,
    env: dict[str, str] | None = None,
) -> bool:
    """Run the cases, print the table; whether every row met its goal."""
    env = env or {}
    image_bytes = int(image_mib * 1024 * 1024)
    load_cases = [LoadCase("8 in flight", 8)] if "8" in cases else []
    if "32" in cases:
        load_cases.append(LoadCase(f"{jobs} in flight", jobs))
    extra = f" (bot environment: {' '.join(f'{k}={v}' for k, v in env.items())})" if env else ""
    print(
        f"memory, on {os.cpu_count()} core(s): {jobs} jobs with {image_mib:g} MiB images pushed at once, the fake"
        f" upstream answering after {latency:g} s; peak = the bot's VmHWM, baseline = its idle VmRSS in the same"
        f" run{extra}"
    )
    print(f"{'case':<16}{'runs':>5}{'peak MiB':>10}{'max':>8}{'max-idle':>11}   {'goal':<14}{'idle MiB':>9}  result")
    passed = True
    for case in load_cases:
        results = [run_load(case, jobs=jobs, image_bytes=image_bytes, latency=latency, env=env) for _ in range(runs)]
        line, ok = load_row(case, results, jobs)
        passed &= ok
        print(line)
        print("\n".join(load_details(results, jobs)), flush=True)
    if "refuse" in cases:
        found = run_refusals(count=refusals, chunked=False, env=env)
        found += run_refusals(count=refusals, chunked=True, env=env)
        line, ok = refusal_row(found)
        passed &= ok
        print(line)
        print("\n".join(refusal_details(found)), flush=True)
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each load case")
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--image-mib", type=float, default=8.0)
    parser.add_argument("--latency", type=float, default=2.0, help="seconds the fake takes per generation")
    parser.add_argument("--cases", default="8,32,refuse", help="8 (in flight), 32 (= --jobs in flight), refuse")
    parser.add_argument("--refusals", type=int, default=2, help="50 MB images per refusal variant")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the bot's environment")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    ok = run(
        runs=args.runs,
        jobs=args.jobs,
        image_mib=args.image_mib,
        latency=args.latency,
        cases=tuple(c.strip() for c in args.cases.split(",")),
        refusals=args.refusals,
        env=env,
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
