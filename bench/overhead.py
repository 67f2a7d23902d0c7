"""Benchmark: what the bot itself adds to a request, end to end, with realistic image sizes.

    overhead = end to end - upstream latency - queue wait

per job, where
- end to end: from just before the /imagine is pushed to the fake Discord, to the moment the fake
  Discord records the edit that carries the image (wall clock; one machine);
- upstream latency: the job's `generated_at - started_at` in the bot's store, i.e. from the moment
  the job is marked as submitting (just before its request leaves) to the provider's answer (the
  JSON that names the image URL). The fake provider takes --latency s per image;
- queue wait: `started_at - queued_at`, the time the job waited for its turn and the upstream.
What is left is the bot's own work: admission and the acknowledgement (push -> queued_at), then
the download of the image, its hash and cache entry, the upload to Discord and the edit
(generated_at -> image edit). The download is counted as overhead although a real provider's
download is network time: on loopback it is the bot's reading and writing of the bytes.

The bot (`python -m bot run`), the fake Discord and the fake image API each run in a process of
their own; jobs are pushed at a steady --rate below the upstream's capacity (--concurrency in
flight, --latency s each), so queue waits are short, and subtracted anyway. One phase per image
size on fresh processes: the fake's tiny default PNG (the baseline in the same run: the bot's
work without the bytes), 2 MiB and 8 MiB (real outputs are 2-7 MB PNGs). Goals (issue 10):
p95 <= 300 ms at 2 MiB, <= 500 ms at 8 MiB.

    .venv/bin/python -m bench.overhead [--jobs 30] [--rate 2] [--latency 1]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import time
from dataclasses import dataclass
from datetime import datetime

from bench.harness import bench_settings, bot_process, http, start

MIB = 1024 * 1024
GOALS_MS = {2 * MIB: 300.0, 8 * MIB: 500.0}


@dataclass(frozen=True)
class Sample:
    total_s: float
    upstream_s: float
    queue_s: float
    before_s: float  # push -> queued_at: admission and acknowledgement
    after_s: float  # generated_at -> the image edit: download, cache, upload, edit

    @property
    def overhead_s(self) -> float:
        return self.total_s - self.upstream_s - self.queue_s


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def phase(image_bytes: int | None, jobs: int, rate: float, latency: float, concurrency: int) -> list[Sample]:
    discord_proc, (api_base, gateway) = start("tests.fakes.fake_discord", marker="FAKE_DISCORD")
    image_args = ["--latency", str(latency)]
    if image_bytes:
        image_args += ["--image-bytes", str(image_bytes)]
    image_proc, (image_base,) = start("tests.fakes.image_api", *image_args, marker="FAKE_IMAGE_API")
    control = api_base.split("/api/")[0] + "/_control"
    settings = bench_settings(
        image_base,
        discord_api_base=api_base,
        discord_gateway_url=gateway,
        upstream_rpm=6000,
        upstream_concurrency=concurrency,
        guild_queue_max=1000,
        user_pending_max=100,
    )
    pushed: dict[str, tuple[str, float]] = {}  # interaction id -> (prompt, push time)
    try:
        with bot_process(settings, control):
            begin = time.monotonic()
            for n in range(jobs):
                delay = begin + n / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                prompt = f"overhead {image_bytes} {n}"
                at = time.time()
                body = {"name": "imagine", "options": {"prompt": prompt}, "user_id": 300_000 + n}
                pushed[http("POST", control + "/slash", body)["id"]] = (prompt, at)  # type: ignore[index]
            edits: dict[str, float] = {}
            deadline = time.monotonic() + jobs * latency + 60
            while len(edits) < jobs and time.monotonic() < deadline:
                time.sleep(0.5)
                for message in http("GET", control + "/messages"):  # type: ignore[union-attr]
                    if message["interaction_id"] in pushed and message["attachments"]:
                        edits[message["interaction_id"]] = message["edited_at"]
        with sqlite3.connect(settings.database_path) as db:
            rows = {
                prompt: (queued, started, generated)
                for prompt, queued, started, generated in db.execute(
                    "SELECT prompt, queued_at, started_at, generated_at FROM jobs WHERE state = 'delivered'"
                )
            }
    finally:
        for process in (discord_proc, image_proc):
            process.terminate()
            process.wait()
    samples = []
    for key, (prompt, at) in pushed.items():
        if key not in edits or prompt not in rows:
            raise RuntimeError(f"{prompt!r} was not delivered")
        queued, started, generated = (_seconds(t) for t in rows[prompt])
        edit = edits[key]
        samples.append(Sample(edit - at, generated - started, started - queued, queued - at, edit - generated))
    return samples


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def row(label: str, samples: list[float | Sample], goal_ms: float | None, base_ms: float | None) -> str:
    overhead = [s.overhead_s * 1000 for s in samples]  # type: ignore[union-attr]
    before = [s.before_s * 1000 for s in samples]  # type: ignore[union-attr]
    after = [s.after_s * 1000 for s in samples]  # type: ignore[union-attr]
    queue = [s.queue_s * 1000 for s in samples]  # type: ignore[union-attr]
    p = p95(overhead)
    verdict = "(baseline)" if goal_ms is None else ("PASS" if p <= goal_ms else "FAIL")
    goal = "" if goal_ms is None else f"<= {goal_ms:g} ms"
    ratio = "" if base_ms is None else f"{p / base_ms:.1f}x"
    return (
        f"{label:<16}{len(samples):>4}{statistics.median(overhead):>9.1f}{p:>9.1f}{max(overhead):>9.1f}"
        f"{statistics.median(before):>9.1f}{statistics.median(after):>9.1f}{max(queue):>9.1f}"
        f"  {goal:<12}{ratio:>7}  {verdict}"
    )


def run(jobs: int, rate: float, latency: float, concurrency: int) -> bool:
    results = {size: phase(size, jobs, rate, latency, concurrency) for size in (None, 2 * MIB, 8 * MIB)}
    print(
        f"overhead on {os.cpu_count()} core(s): end to end - upstream latency - queue wait, per job (ms); "
        f"{jobs} jobs at {rate:g}/s per size, the fake upstream {latency:g} s an image, {concurrency} in flight"
    )
    print(
        f"{'image':<16}{'n':>4}{'median':>9}{'p95':>9}{'max':>9}{'ack':>9}{'deliver':>9}{'queue':>9}"
        f"  {'goal':<12}{'p95/base':>7}"
    )
    base = p95([s.overhead_s * 1000 for s in results[None]])
    print(row("tiny (baseline)", results[None], None, None))  # type: ignore[arg-type]
    ok = True
    for size, goal in GOALS_MS.items():
        line = row(f"{size // MIB} MiB", results[size], goal, base)  # type: ignore[arg-type]
        ok = ok and line.endswith("PASS")
        print(line)
    print("ack: push -> queued (median); deliver: provider's answer -> image edit (median); queue: longest wait")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--rate", type=float, default=2.0, help="pushes per second")
    parser.add_argument("--latency", type=float, default=1.0, help="the fake upstream's seconds per image")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    run(args.jobs, args.rate, args.latency, args.concurrency)


if __name__ == "__main__":
    main()
