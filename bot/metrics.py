"""What the bot counts, for Prometheus: one `Metrics` per bot instance, with a registry of its own.

The facts are counted where they are decided, through the small methods below (the runner, the
service and the image client call them), so no prometheus call is scattered through the code:
a job is counted delivered (and its fen spent) only when the store has committed the charge, and
failed only when the store has recorded the failure, so the counters agree with the ledger.

A registry per instance, not prometheus_client's global one: tests run several bots in one
process, and each bot process serves its own figures (several processes on one PostgreSQL each
expose their own; sum them). Counting costs microseconds, so it is always on; METRICS_PORT only
decides whether anything serves the registry (bot/ops_server.py).

Labels are bounded on purpose: command, cause, reason, outcome, cache, shard, interaction type.
Never a guild, user or job id (unbounded cardinality, and not the operator's business).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from bot.errors import ImagineError
from bot.storage.db import utc_now
from bot.storage.jobs import Job

log = logging.getLogger("imagine.metrics")

# In the text format each counter's creation time would be a series of its own (`*_created`): noise
# for every chart. Process-wide in prometheus_client, and this process serves only the bot's metrics.
disable_created_metrics()

#: a scrape-time refresh (e.g. the queue gauges read from the store) gets this long, then is skipped
SCRAPE_HOOK_TIMEOUT_S = 2.0
#: the cause of a failure that is not one of the bot's own outcomes (a bug): the ledger keeps its class
UNEXPECTED = "Unexpected"

# seconds from a request to its image: a cache hit is immediate, a generation takes 5-60 s, and
# Discord's reply window closes at 15 minutes
REQUEST_TO_IMAGE_BUCKETS = (0.5, 1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900)
# seconds of one upstream attempt: an error answers at once, a generation in 5-60 s (timeout 120 s)
UPSTREAM_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180)
# seconds the event loop answered late: anything past ~50 ms shows up as slow acknowledgements
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def failure_cause(error: BaseException | str) -> str:
    """The `cause` label of a failed job: the ledger's error_code (the error's class name, as the
    admins' report groups failures) for the bot's own outcomes; `Unexpected` for anything else,
    so a bug cannot mint label values."""
    if isinstance(error, str):
        return error
    return type(error).__name__ if isinstance(error, ImagineError) else UNEXPECTED


def attempt_outcome(error: BaseException | None) -> str:
    """The `outcome` label of one upstream attempt: ok, the error's class name (RateLimited,
    ServerError, Timeout, ...), cancelled (the bot stopped), or Unexpected."""
    if error is None:
        return "ok"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return failure_cause(error)


class Metrics:
    def __init__(self, *, wall_clock: Callable[[], datetime] = utc_now) -> None:
        self._wall_clock = wall_clock  # the store's clock: queued_at was written with it
        self._scrape_hooks: list[Callable[[], Awaitable[None]]] = []
        self.registry = registry = CollectorRegistry()
        # the standard process_*, python_gc_* and python_info series every Python exporter has
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(standard)

        # -- Discord: the names bot operators already chart (discord-ext-prometheus, Grafana 17670);
        # the gauges discord_connected, discord_latency and discord_stat_total_guilds are read from
        # the client at scrape time (bot/gateway_metrics.py)
        self.interactions = Counter(
            "discord_event_on_interaction",
            "Interactions received, by shard, interaction type and command",
            ["shard", "interaction", "command"],
            registry=registry,
        )

        # -- jobs, by outcome
        self.delivered = Counter(
            "imagine_jobs_delivered",
            "Images delivered (the ledger's delivered jobs); cache=hit: answered from the result cache, at no cost",
            ["command", "cache"],
            registry=registry,
        )
        self.failed = Counter(
            "imagine_jobs_failed",
            "Jobs failed (never charged), by cause: the ledger's error_code",
            ["command", "cause"],
            registry=registry,
        )
        self.refused = Counter(
            "imagine_requests_refused",
            "Requests refused before any job was made (nothing charged), by the limit that refused them",
            ["command", "reason"],
            registry=registry,
        )
        self.spent_fen = Counter(
            "imagine_spent_fen",
            "Money charged for delivered images, in fen (the sum of the ledger's cost_fen)",
            registry=registry,
        )
        self.billed_fen = Counter(
            "imagine_upstream_billed_fen",
            "Money the provider billed for generated images, in fen (the sum of the ledger's upstream_fen)",
            registry=registry,
        )
        self.request_to_image = Histogram(
            "imagine_request_to_image_seconds",
            "From the request's admission to its image delivered",
            ["cache"],
            buckets=REQUEST_TO_IMAGE_BUCKETS,
            registry=registry,
        )

        # -- the upstream
        self.upstream_seconds = Histogram(
            "imagine_upstream_request_seconds",
            "One upstream generation attempt, from sending to the answer, by outcome",
            ["outcome"],
            buckets=UPSTREAM_BUCKETS,
            registry=registry,
        )
        self.upstream_429 = Counter(
            "imagine_upstream_429",
            "429 (rate limited) answers received from the upstream, retried ones included",
            registry=registry,
        )
        self.upstream_in_flight = Gauge(
            "imagine_upstream_requests_in_flight",
            "Upstream generation requests being made now by this process",
            registry=registry,
        )

        # -- the process
        self.loop_lag = Histogram(
            "imagine_event_loop_lag_seconds",
            "How late the event loop woke a 0.25 s sleep: time it spent on other work without yielding",
            buckets=LOOP_LAG_BUCKETS,
            registry=registry,
        )

    # -- jobs ----------------------------------------------------------------------------------------
    def job_delivered(self, job: Job, cost_fen: int) -> None:
        """The store has just committed the delivery and its charge."""
        cache = "hit" if job.cache_hit else "miss"
        self.delivered.labels(job.command, cache).inc()
        self.spent_fen.inc(cost_fen)
        waited = (self._wall_clock() - datetime.fromisoformat(job.queued_at)).total_seconds()
        self.request_to_image.labels(cache).observe(max(0.0, waited))

    def job_failed(self, command: str, error: BaseException | str) -> None:
        """The store has just recorded the failure (and given back what the job reserved)."""
        self.failed.labels(command, failure_cause(error)).inc()

    def request_refused(self, command: str, reason: str) -> None:
        self.refused.labels(command, reason).inc()

    def upstream_billed(self, fen: int) -> None:
        """The store has just recorded what the provider billed for a generated image."""
        self.billed_fen.inc(fen)

    # -- the upstream --------------------------------------------------------------------------------
    @contextmanager
    def upstream_attempt(self) -> Iterator[None]:
        """Around one upstream HTTP attempt: in flight while it runs, then timed by its outcome."""
        self.upstream_in_flight.inc()
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.upstream_in_flight.dec()
            outcome = attempt_outcome(error)
            self.upstream_seconds.labels(outcome).observe(time.perf_counter() - started)
            if outcome == "RateLimited":
                self.upstream_429.inc()

    # -- Discord -------------------------------------------------------------------------------------
    def interaction(self, shard: int, interaction_type: str, command: str) -> None:
        self.interactions.labels(str(shard), interaction_type, command).inc()

    # -- scraping ------------------------------------------------------------------------------------
    def on_scrape(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` before each scrape (gauges that need a read of the store)."""
        self._scrape_hooks.append(hook)

    async def before_scrape(self) -> None:
        """Refresh the scrape-time gauges; one that fails or is slow keeps its last value (logged)."""
        for hook in self._scrape_hooks:
            try:
                async with asyncio.timeout(SCRAPE_HOOK_TIMEOUT_S):
                    await hook()
            except Exception as exc:
                log.warning("metrics: %s not refreshed for this scrape: %r", getattr(hook, "__qualname__", hook), exc)
