"""Benchmark: a cache hit against a miss, end to end through the fake Discord.

The bot, the fake Discord and the fake image API each run in a process of their own, as in
production (a fake inside the bot's event loop would slow down with the bot and hide its cost).
For each request the time is measured from just before the interaction is pushed to the moment
the fake Discord records the edit that carries the image (its own clock, the same machine's),
so the polling of this script does not count.

Baseline in the same run: misses (a new prompt each time: the upstream is called, the image is
downloaded, stored and delivered) with the fake upstream at its default latency (0 s), and
again at --latency seconds to show what a real generation adds. Then hits (the same prompt
again: no upstream call).

    .venv/bin/python -m bench.cache_hit [--requests 40] [--latency 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from bench.harness import bench_settings, bot_process, http, start


async def one_request(control: str, prompt: str, user_id: int) -> float:
    """Seconds from the push to the image edit, as recorded by the fake Discord."""
    started = time.time()
    sent = await asyncio.to_thread(
        http, "POST", control + "/slash", {"name": "imagine", "options": {"prompt": prompt}, "user_id": user_id}
    )
    interaction_id = sent["id"]  # type: ignore[index]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        messages = await asyncio.to_thread(http, "GET", control + "/messages")
        for message in messages:  # type: ignore[union-attr]
            if message["interaction_id"] == interaction_id and message["attachments"]:
                return message["edited_at"] - started
        await asyncio.sleep(0.005)
    raise TimeoutError(f"no image for {prompt!r}")


def row(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"{name:<34}{len(samples):>5}{statistics.median(samples) * 1000:>12.1f}{p99 * 1000:>12.1f}"


async def phase(latency: float, batches: list[list[tuple[str, int]]]) -> list[list[float]]:
    """A fresh fake Discord, fake upstream (at `latency`) and bot; the batches run one request at a time."""
    discord_proc, (api_base, gateway) = start("tests.fakes.fake_discord", marker="FAKE_DISCORD")
    image_proc, (image_base,) = start("tests.fakes.image_api", "--latency", str(latency), marker="FAKE_IMAGE_API")
    control = api_base.split("/api/")[0] + "/_control"
    settings = bench_settings(image_base, discord_api_base=api_base, discord_gateway_url=gateway, upstream_rpm=6000)
    try:
        with bot_process(settings, control):
            return [[await one_request(control, prompt, user) for prompt, user in batch] for batch in batches]
    finally:
        for process in (discord_proc, image_proc):
            process.terminate()
            process.wait()


async def run(requests: int, latency: float) -> None:
    misses, hits = await phase(
        0.0,
        [
            [(f"miss {i}", 1000 + i) for i in range(requests)],  # a new prompt each time: upstream
            [("miss 0", 2000 + i) for i in range(requests)],  # the first prompt again: the cache
        ],
    )
    [slow] = await phase(latency, [[(f"slow {i}", 3000 + i) for i in range(max(3, requests // 8))]])
    print(f"cache benchmark on {os.cpu_count()} core(s), end to end through the fake Discord (ms)")
    print(f"{'':<34}{'n':>5}{'median':>12}{'p99':>12}")
    print(row("miss, upstream latency 0 s (base)", misses))
    print(row(f"miss, upstream latency {latency:g} s", slow))
    print(row("hit (no upstream call)", hits))
    print(f"hit vs miss at 0 s: {statistics.median(misses) / statistics.median(hits):.1f}x faster (median)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--latency", type=float, default=2.0, help="a realistic generation time for the slow row")
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.latency))


if __name__ == "__main__":
    main()
