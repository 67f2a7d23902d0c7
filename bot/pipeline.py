"""Build (and close) everything below the Discord line from the settings, in one place.

The CLI and the Discord bot both call `Pipeline.open`, so they run the very same store, HTTP
client, image client, limiter and service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from bot.admin import GuildAdmin
from bot.cache import ResultCache
from bot.clock import Clock, SystemClock
from bot.config import Settings
from bot.contracts import Delivery
from bot.gatekeeper import Gatekeeper
from bot.imaging.client import ImageClient, answer_limit
from bot.imaging.download import ImageFetcher
from bot.imaging.retry import RetryPolicy
from bot.limiter import UpstreamLimiter
from bot.metrics import Metrics
from bot.queue_gauges import QueueGauges
from bot.service import GenerationService
from bot.status import StatusReader
from bot.storage.connect import open_store
from bot.storage.db import Store, utc_now
from bot.storage.guilds import GuildStore
from bot.storage.images import ImageStore
from bot.storage.jobs import JobStore
from bot.storage.shared_queue import SharedQueue
from bot.storage.upstream import SharedBudget
from bot.storage.user_settings import UserSettingsStore
from bot.upstream_health import UpstreamHealth

#: a start held back by the rate windows is granted this much ahead (its request still leaves when
#: the window opens): claiming and reading the job overlap the wait (PostgreSQL: ~9 ms a start)
PERMIT_LEAD_S = 0.05


@dataclass
class Pipeline:
    settings: Settings
    store: Store
    http: httpx.AsyncClient
    service: GenerationService
    admin: GuildAdmin
    budget: SharedBudget
    status: StatusReader
    limiter: UpstreamLimiter
    metrics: Metrics
    user_settings: UserSettingsStore  # personal defaults (/settings)

    @property
    def jobs(self) -> JobStore:
        return self.service.jobs

    @classmethod
    async def open(
        cls,
        settings: Settings,
        delivery: Delivery,
        *,
        clock: Clock | None = None,
        wall_clock: Callable[[], datetime] = utc_now,
        max_requeues: int = 5,
        claims: bool = True,
        metrics: Metrics | None = None,
    ) -> Pipeline:
        """`claims`: on a shared store (PostgreSQL), take jobs from the shared queue as every bot
        process does; False (the CLI) runs only this process's own jobs, under the shared budget.
        `metrics`: where the figures are counted (the bot's, which it serves); else a private one."""
        settings.require("NEBULA_API_KEY")
        clock = clock or SystemClock()
        metrics = metrics or Metrics(wall_clock=wall_clock)
        store = await open_store(settings.database_url, clock=wall_clock)
        try:
            # One upstream budget for every process on this store (the bot, the CLI beside it):
            # the provider's limits are per account.
            budget = await SharedBudget.open(settings.database_url, store)
        except BaseException:
            await store.close()
            raise
        # One HTTP client for the process (connection reuse); timeouts are set per call.
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=10.0),
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=10),
            headers={"User-Agent": "imagine-bot"},
            follow_redirects=False,
        )
        health = UpstreamHealth()  # every upstream attempt's outcome, for /imagine-admin status
        try:
            assert settings.nebula_api_key is not None  # checked by require() above
            images = ImageStore(settings.cache_dir)
            await images.sweep_spool()  # downloads cut short by a kill (SIGKILL, power cut)
            client = ImageClient(
                http,
                base_url=settings.nebula_base_url,
                api_key=settings.nebula_api_key,
                timeout_s=settings.upstream_timeout_s,
                policy=RetryPolicy(
                    max_retries=settings.upstream_max_retries,
                    retry_after_cap_s=settings.upstream_retry_after_cap_s,
                ),
                shape=settings.image_request_shape,
                on_attempt=health.record_attempt,
                metrics=metrics,
                max_answer_bytes=answer_limit(settings.image_max_bytes),
            )
            fetcher = ImageFetcher(
                http,
                store=images,
                allowlist=settings.image_host_allowlist,
                gateway_url=settings.nebula_base_url,
                max_bytes=settings.image_max_bytes,
            )
            limiter = UpstreamLimiter(
                concurrency=settings.upstream_concurrency,
                rpm=settings.upstream_rpm,
                clock=clock,
                margin_s=settings.upstream_window_margin_ms / 1000,
                shared=budget,
                lead_s=PERMIT_LEAD_S,
            )
            gatekeeper = Gatekeeper(settings, GuildStore(store), utcnow=wall_clock)
            cache = ResultCache(
                store,
                images,
                ttl=timedelta(hours=settings.cache_ttl_hours),
                max_bytes=settings.cache_max_mb * 1024 * 1024,
                utcnow=wall_clock,
            )
            shared_queue = (
                SharedQueue(store, budget.owner, lease_s=settings.job_lease_s)
                if settings.uses_postgres and claims
                else None
            )
            service = GenerationService(
                settings=settings,
                jobs=JobStore(store),
                images=images,
                client=client,
                fetcher=fetcher,
                limiter=limiter,
                delivery=delivery,
                clock=clock,
                max_requeues=max_requeues,
                gatekeeper=gatekeeper,
                store=store,
                cache=cache,
                shared_queue=shared_queue,
                metrics=metrics,
            )
            status = StatusReader(
                settings=settings,
                store=store,
                scheduler=service.scheduler,
                limiter=limiter,
                gatekeeper=gatekeeper,
                health=health,
                shared_queue=shared_queue is not None,
            )
            gauges = QueueGauges(
                service.jobs,
                running=lambda: service.scheduler.running_count,
                pause_remaining=limiter.pause_remaining,
                wall_clock=wall_clock,
            )
            metrics.registry.register(gauges)
            metrics.on_scrape(gauges.refresh)
        except BaseException:
            await http.aclose()
            await budget.close()
            await store.close()
            raise
        return cls(
            settings=settings,
            store=store,
            http=http,
            service=service,
            admin=GuildAdmin(store, gatekeeper),
            budget=budget,
            status=status,
            limiter=limiter,
            metrics=metrics,
            user_settings=UserSettingsStore(store),
        )

    async def close(self, grace_s: float | None = None) -> None:
        try:
            await self.service.stop(grace_s)
        finally:
            await self.http.aclose()
            await self.budget.close()
            await self.store.close()
