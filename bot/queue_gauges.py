"""The queue and the upstream as gauges, read when Prometheus scrapes (nothing to keep up to date).

imagine_queue_depth and imagine_queue_oldest_wait_seconds come from the store (one indexed read
per scrape, before it): the jobs admitted and not started yet, which on PostgreSQL is the one
shared queue, the same figure in every process (aggregate with max(), not sum()). If the read
fails or is slow the two are left out of that scrape rather than shown stale. Jobs running and
the upstream pause are this process's own, read from memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.storage.jobs import JobStore


class QueueGauges(Collector):
    def __init__(
        self,
        jobs: JobStore,
        *,
        running: Callable[[], int],
        pause_remaining: Callable[[], float],
        wall_clock: Callable[[], datetime],
    ) -> None:
        self._jobs = jobs
        self._running = running
        self._pause_remaining = pause_remaining
        self._wall_clock = wall_clock  # the store's clock: queued_at was written with it
        self._waiting: tuple[int, float] | None = None  # (jobs, oldest's wait in s), as of the last refresh

    async def refresh(self) -> None:
        """Before a scrape: read the waiting jobs from the store."""
        self._waiting = None
        count, oldest = await self._jobs.waiting()
        waited = 0.0 if oldest is None else (self._wall_clock() - datetime.fromisoformat(oldest)).total_seconds()
        self._waiting = (count, max(0.0, waited))

    def collect(self) -> Iterator[Metric]:
        if self._waiting is not None:
            count, waited = self._waiting
            yield GaugeMetricFamily(
                "imagine_queue_depth",
                "Jobs admitted and not started yet (on PostgreSQL: the shared queue, the same in every process)",
                value=count,
            )
            yield GaugeMetricFamily(
                "imagine_queue_oldest_wait_seconds",
                "How long the oldest of those jobs has waited since it was admitted (0 when none waits)",
                value=waited,
            )
        yield GaugeMetricFamily("imagine_jobs_running", "Jobs this process is running now", value=self._running())
        yield GaugeMetricFamily(
            "imagine_upstream_pause_seconds",
            "Seconds left of this process's pause of every upstream start after a 429 (0: not paused)",
            value=self._pause_remaining(),
        )
