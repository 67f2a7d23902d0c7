"""Running one job, under an upstream permit: generate, store, share, deliver, charge, or fail.

The scheduler calls `run`. The job row is the truth at every step: `generated` (URL and request
id) is written before anything else is done with the image, so a restart only re-fetches and
re-delivers. A new image goes into the result cache and to every identical request waiting on
it (single-flight); a cache hit is delivered at zero cost. Every failure is recorded with the
upstream request id, refunds what the job reserved, and is told to the user.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable

from bot import messages
from bot.background import Background
from bot.config import Settings
from bot.contracts import Delivery, DeliveryError, ImageLost, PrivateReplyClosed
from bot.errors import ImagineError
from bot.gatekeeper import Gatekeeper
from bot.i18n import Text
from bot.imaging.client import ImageClient
from bot.imaging.download import ImageFetcher
from bot.imaging.errors import ContentRejected, ImageDownloadError, RateLimited, UpstreamError
from bot.imaging.models import ImageRequest
from bot.limiter import Gate
from bot.log_fields import job_fields, latency_ms
from bot.metrics import Metrics
from bot.modlog import ModerationLog, excerpt
from bot.requests import params_of
from bot.scheduler import QueueItem
from bot.sharing import ResultSharing
from bot.storage.images import ImageStore, OpenImage, StoredImage
from bot.storage.jobs import Job, JobStore
from bot.storage.quotas import QuotaExceeded

log = logging.getLogger("imagine.service")

MONEY_SCOPES = frozenset({"guild_day_fen", "guild_month_fen"})
IMAGE_SCOPES = frozenset({"user_day", "user_month"})


class JobRunner:
    DELIVERY_RETRIES = 3

    def __init__(
        self,
        *,
        settings: Settings,
        jobs: JobStore,
        images: ImageStore,
        client: ImageClient,
        fetcher: ImageFetcher,
        delivery: Delivery,
        background: Background,
        mod_log: ModerationLog,
        sharing: ResultSharing,
        on_finished: Callable[[int], None],
        on_requeued: Callable[[int], None],
        gatekeeper: Gatekeeper | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_requeues: int = 5,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics or Metrics()
        self.jobs = jobs
        self._images = images
        self._client = client
        self._fetcher = fetcher
        self._delivery = delivery
        self._background = background
        self._mod_log = mod_log
        self._sharing = sharing
        self._on_finished = on_finished
        self._on_requeued = on_requeued
        self._gate = gatekeeper
        self._sleep = sleep
        #: a job put back by 429s more often than this fails (the bot's jobs have a deadline anyway;
        #: the CLI passes 0: after the client's own retries it reports the failure)
        self._max_requeues = max_requeues
        self._requeues: dict[int, int] = defaultdict(int)

    async def run(self, item: QueueItem, gate: Gate) -> None:
        """The scheduler's runner: one job, holding an upstream permit for its first attempt."""
        job = await self.jobs.get(item.job_id)
        if job is None or job.finished:
            return
        try:
            if job.state == "queued" and await self._take_flight(job, gate):
                return  # answered from the cache, or following an identical job in flight
            image: OpenImage | None = None  # an inline image, already in the store and open
            if job.state != "generated":
                generated = await self._generate(job, gate)
                if generated is None:
                    return
                job, image = generated
            gate.close()  # nothing more to send: an unused permit goes back before the upload
            await self.deliver(job, image)
        except RateLimited:
            raise  # the scheduler puts the job back at the head of its queue
        except Exception as exc:  # a bug must fail one job, never the bot
            log.exception("job %s failed unexpectedly", job.id)
            await self.fail(job, exc)

    async def _generate(self, job: Job, gate: Gate) -> tuple[Job, OpenImage | None] | None:
        """The generation: the job marked generated, and its image if it came inline (open); None
        when it failed (or went back to the queue)."""
        try:
            if not await self.jobs.mark_submitting(job.id):
                return None
            log.info("job %s started", job.id, extra=job_fields(job, state="submitting"))
            self._background.notify(self._delivery.started(job))
            response = await self._client.generate(_image_request(job), gate=gate)
        except asyncio.CancelledError:
            if not gate.sent:  # stopped before its request left: back to the queue, the attempt uncounted
                await asyncio.shield(self.jobs.mark_queued_again(job.id))
            raise
        except RateLimited as exc:
            self._requeues[job.id] += 1
            if self._requeues[job.id] <= self._max_requeues:
                await self.jobs.mark_queued_again(job.id)
                log.warning(
                    "job %s: upstream busy (request_id=%s); back to the head of its queue",
                    job.id,
                    exc.request_id,
                    extra=job_fields(job, state="queued", request_id=exc.request_id),
                )
                self._on_requeued(job.id)
                raise
            await self.fail(job, exc)
            return None
        except UpstreamError as exc:
            await self.fail(job, exc)
            return None
        image = response.first
        # The URL and request id are durable before anything else happens: from here on a restart
        # re-fetches and re-delivers, and never pays for a second generation.
        billed = self._settings.price_per_image_fen
        if await self.jobs.mark_generated(
            job.id,
            request_id=response.request_id,
            image_url=image.url,
            revised_prompt=image.revised_prompt,
            upstream_fen=billed,
        ):
            self._metrics.upstream_billed(billed)
        if image.url:
            return await self._reload(job), None
        try:
            inline = await self._fetcher.decode_b64(image.b64_json, request_id=response.request_id)
        except ImageDownloadError as exc:
            await self.fail(await self._reload(job), exc)
            return None
        try:
            await self.jobs.set_image(job.id, inline.sha256)
            return await self._reload(job), inline
        except BaseException:
            await inline.close()
            raise

    async def deliver(self, job: Job, image: OpenImage | None = None) -> None:
        """Deliver, charge, release. `image`: the job's image, already open (it just came inline);
        else the stored one, or a fresh download of the URL. Closed when the delivery ends."""
        if image is None:
            try:
                image = await self._image_for(job)
            except ImagineError as exc:
                await self.fail(job, exc)
                return
        try:
            await self._deliver_open(job, image)
        finally:
            await image.close()

    async def _deliver_open(self, job: Job, image: OpenImage) -> None:
        if not job.cache_hit:
            await self._share(job, image)
        result_message_id: int | None = None
        for attempt in range(self.DELIVERY_RETRIES + 1):
            try:
                result_message_id = await self._delivery.deliver(job, image)
                break
            except Exception as exc:  # a bug on our side of the delivery is retried like Discord's 5xx
                if not isinstance(exc, DeliveryError | PrivateReplyClosed):
                    log.exception("job %s: unexpected error while delivering", job.id)
                final = isinstance(exc, PrivateReplyClosed) or (isinstance(exc, DeliveryError) and not exc.retryable)
                if final or attempt == self.DELIVERY_RETRIES:
                    log.warning("job %s: delivery failed for good: %s", job.id, exc)
                    # a private result's closed window says so itself; anything else is a failed delivery
                    error = exc if isinstance(exc, PrivateReplyClosed) else ImagineError(messages.DELIVERY_FAILED)
                    await self.fail(job, error)
                    return
                log.warning("job %s: delivery failed (%s); retrying from the stored image", job.id, exc)
                await self._sleep(0.5 * 2**attempt)
        cost_fen = 0 if job.cache_hit else self._settings.price_per_image_fen
        if job.cache_hit:
            delivered = await self.jobs.mark_delivered(
                job.id,
                cost_fen=0,
                refund_scopes=await self._hit_refunds(job),
                result_message_id=result_message_id,
            )
        else:
            delivered = await self.jobs.mark_delivered(job.id, cost_fen=cost_fen, result_message_id=result_message_id)
        if delivered:
            self._metrics.job_delivered(job, cost_fen)  # counted as the ledger charges it: once
            log.info(
                "job %s delivered%s",
                job.id,
                " from the cache" if job.cache_hit else "",
                extra=job_fields(
                    job, state="delivered", cost_fen=cost_fen, latency_ms=latency_ms(job.queued_at, self.jobs.now())
                ),
            )
        try:  # housekeeping: the user has the image and it is paid for, whatever happens here
            await self._release_image(image.sha256)
        except Exception:
            log.exception("job %s: delivered, but its image file could not be released", job.id)
        self._finish(job.id)

    # -- the result cache and shared flights -----------------------------------------------------
    async def _job_cache_key(self, job: Job) -> str | None:
        return await self._sharing.key(params_of(job), job.model, job.guild_id)

    async def _take_flight(self, job: Job, gate: Gate) -> bool:
        """A queued job about to run (e.g. re-queued after a restart, or a follower whose leader
        landed) decides again: True when it needs no generation of its own (answered from the
        cache, or following an identical job in flight); its permit then goes back unused at once.
        Otherwise it leads, and a former follower (which reserved no money) reserves its budget.
        """
        if job.reroll_of is not None or self._sharing.key_of(job.id) is not None:
            return False  # rerolls always generate; a leader already holds its flight
        key = await self._job_cache_key(job)
        if key is None:
            return False
        async with self._sharing.choose(key) as choice:
            if choice.hit is None and not (choice.leader is not None and choice.follow(job.id)):
                choice.lead(job.id)
                return not await self._reserve_money(job)
            gate.close()
            if choice.hit is None:
                return True  # following: answered when the leader lands
            if not await self.jobs.mark_cache_hit(job.id, sha256=choice.hit.sha256, request_id=choice.hit.request_id):
                return False
        await self.deliver_by_id(job.id)
        return True

    async def _reserve_money(self, job: Job) -> bool:
        """Reserve the budget a job about to be generated has not reserved yet; False if it failed."""
        if job.guild_id is None or job.user_id is None or self._gate is None:
            return True
        charges, _ = await self._gate.charges(job.guild_id, job.user_id, ())
        try:
            await self.jobs.add_charges(job.id, [c for c in charges if c.scope in MONEY_SCOPES])
        except QuotaExceeded as exc:
            await self.fail(job, await self._gate.explain(job.guild_id, exc))
            return False
        return True

    async def _share(self, job: Job, image: StoredImage) -> None:
        """A new image: into the cache, and to every identical request waiting on this one."""
        key = self._sharing.key_of(job.id) or await self._job_cache_key(job)
        for follower in await self._sharing.publish(job.id, key, image.sha256, image.size, job.request_id):
            if await self.jobs.mark_cache_hit(follower, sha256=image.sha256, request_id=job.request_id):
                self._background.spawn(self.deliver_by_id(follower))

    async def _hit_refunds(self, job: Job) -> frozenset[str]:
        """A cache hit costs nothing: money reserved is given back, images too unless the guild counts hits."""
        counts = False
        if job.guild_id is not None and self._gate is not None:
            counts = (await self._gate.policy(job.guild_id)).cache_counts_toward_limits
        return MONEY_SCOPES if counts else MONEY_SCOPES | IMAGE_SCOPES

    async def _release_image(self, sha256: str) -> None:
        """Delete a delivered image unless the cache keeps it or another job still needs it."""
        if await self._sharing.holds(sha256):
            return
        if not await self.jobs.image_in_use(sha256):
            await self._images.delete(sha256)

    async def deliver_by_id(self, job_id: int) -> None:
        """A delivery of its own (a cache hit, a follower, a job resumed after a restart): nothing
        escapes it, so a job can never be left `generated` silently."""
        job = await self.jobs.get(job_id)
        if job is None or job.state != "generated":
            return
        try:
            await self.deliver(job)
        except Exception as exc:
            log.exception("job %s: delivery failed unexpectedly", job_id)
            await self.fail(job, exc)

    async def _image_for(self, job: Job) -> OpenImage:
        """The stored image if we have it intact, else a fresh download of the URL into the store;
        open, so that another job releasing the same bytes cannot take them from this delivery."""
        if job.image_sha256:
            stored = await self._images.open_image(job.image_sha256)
            if stored is not None:
                return stored
        if not job.image_url:
            raise ImageLost(Text("error.image_lost"))
        image = await self._fetcher.fetch(job.image_url, request_id=job.request_id)
        try:
            await self.jobs.set_image(job.id, image.sha256)
        except BaseException:
            await image.close()
            raise
        return image

    async def fail(self, job: Job, error: BaseException, *, shared: bool = False) -> None:
        job = await self._reload(job)  # the current row, with its reply token (erased by mark_failed)
        request_id = getattr(error, "request_id", None)
        code = type(error).__name__
        if job.finished:  # e.g. delivered and charged: a late error must never reach the user
            log.error("job %s: %s after it was %s: %s (the user keeps the result)", job.id, code, job.state, error)
            self._finish(job.id)
            return
        log.warning(
            "job %s failed: %s: %s (request_id=%s)",
            job.id,
            code,
            getattr(error, "message", error),
            request_id or "-",
            extra=job_fields(
                job,
                state="failed",
                request_id=request_id or job.request_id,
                cost_fen=0,
                latency_ms=latency_ms(job.queued_at, self.jobs.now()),
            ),
        )
        hint = messages.operator_hint(error)
        if hint:
            log.error("operator action needed: %s", hint)
        if not await self.jobs.mark_failed(
            job.id,
            error_code=code,
            error_message=str(getattr(error, "message", error)),
            request_id=request_id,
        ):  # it finished meanwhile
            self._finish(job.id)
            return
        self._metrics.job_failed(job.command, error)
        if job.image_sha256:
            await self._release_image(job.image_sha256)
        for follower in self._sharing.land(job.id):  # identical requests waiting on this one fail alike
            follower_job = await self.jobs.get(follower)
            if follower_job is not None:
                self._background.spawn(self.fail(follower_job, error, shared=True))
        try:
            await self._delivery.failed(job, error)
        except Exception:
            log.exception("job %s: could not report the failure", job.id)
        if isinstance(error, ContentRejected) and job.guild_id is not None and not shared:
            text = Text(
                "modlog.content_rejected", user=job.user_id, request_id=request_id or "-", excerpt=excerpt(job.prompt)
            )
            await self._mod_log.post(job.guild_id, text, job.guild_locale)
        self._finish(job.id)

    def _finish(self, job_id: int) -> None:
        self._requeues.pop(job_id, None)
        self._on_finished(job_id)

    async def _reload(self, job: Job) -> Job:
        return await self.jobs.get(job.id) or job


def _image_request(job: Job) -> ImageRequest:
    return ImageRequest(
        model=job.model,
        prompt=job.prompt,
        size=job.size,
        negative_prompt=job.negative_prompt,
        prompt_extend=job.prompt_extend,
        watermark=job.watermark,
    )
