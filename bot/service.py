"""The generation service: the one pipeline behind the slash commands and the CLI (no discord).

submit() admits a request (queue limits), writes its durable `queued` row and hands it to the
scheduler. The scheduler calls `_run` under the upstream limiter: generate -> record
`generated` (URL + request id first) -> fetch and store the image -> deliver -> charge. A
`Delivery` (the CLI's file writer, or the Discord layer) is told about every step.

Nothing lost, nothing twice: after a restart `resume()` re-queues queued jobs in order,
resubmits a job caught mid-request at most once, and only re-delivers generated jobs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from bot import messages
from bot.cache import CacheHit, Flights, ResultCache
from bot.clock import Clock, SystemClock
from bot.config import Settings
from bot.errors import ImagineError, LimitReached
from bot.gatekeeper import Gatekeeper, RuleRefusal, Usage
from bot.imaging.client import Gate, ImageClient
from bot.imaging.download import DownloadedImage, ImageFetcher, sniff_kind
from bot.imaging.errors import ContentRejected, ImageDownloadError, RateLimited, UpstreamError
from bot.imaging.models import ImageRequest
from bot.limiter import UpstreamLimiter
from bot.presets import ImageParams, cache_key
from bot.requests import GenerationRequest
from bot.scheduler import QueueItem, QueuePosition, QueueRefusal, Scheduler
from bot.storage.db import Store, iso
from bot.storage.images import ImageStore
from bot.storage.jobs import Cooldown, CooldownActive, Job, JobStore, NewJob, new_local_id
from bot.storage.quotas import Charge, QuotaExceeded
from bot.storage.reports import counters

log = logging.getLogger("imagine.service")

CLI_GUILD = "cli"
_MONEY_SCOPES = frozenset({"guild_day_fen", "guild_month_fen"})
_IMAGE_SCOPES = frozenset({"user_day", "user_month"})


class DeliveryError(Exception):
    """Posting the result failed; `retryable` for 429/5xx/dropped connections on the far side."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class JobInterrupted(ImagineError):
    """The bot stopped mid-request twice: the job is not submitted a third time."""


class ImageLost(ImagineError):
    """A generated image can no longer be fetched (no stored bytes, no URL)."""


class ShuttingDown(ImagineError):
    """The bot is stopping and accepts no new work."""


class Delivery(Protocol):
    """Where a job's progress and result go (a file for the CLI, a Discord message for the bot)."""

    async def queued(self, job: Job, position: QueuePosition) -> None: ...

    async def started(self, job: Job) -> None: ...

    async def deliver(self, job: Job, image: DownloadedImage) -> None: ...

    async def failed(self, job: Job, error: BaseException) -> None: ...

    async def moderation(self, channel_id: int, text: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Requester:
    requester: str  # "cli" or the Discord user id
    guild_id: int | None = None
    channel_id: int | None = None
    user_id: int | None = None
    role_ids: tuple[int, ...] = ()  # the member's roles: role overrides of the limits

    @property
    def guild_key(self) -> str:
        return f"guild:{self.guild_id}" if self.guild_id is not None else CLI_GUILD


@dataclass(frozen=True, slots=True)
class QueueStatus:
    running: int
    waiting: int
    mine: list[QueuePosition]  # the caller's waiting jobs, in order
    new_request_wait_s: float


@dataclass(frozen=True, slots=True)
class ReplyHandle:
    """Where a Discord job's progress is shown: the interaction's reply, while its token is valid."""

    token: str = field(repr=False)
    expires_at: datetime
    message_id: int | None = None


@dataclass(frozen=True, slots=True)
class Ticket:
    job_id: int
    position: QueuePosition | None
    replayed: bool = False  # the id existed already: nothing new was queued
    cached: bool = False  # answered from the result cache (or shares an identical request in flight)


class GenerationService:
    DELIVERY_RETRIES = 3

    def __init__(
        self,
        *,
        settings: Settings,
        jobs: JobStore,
        images: ImageStore,
        client: ImageClient,
        fetcher: ImageFetcher,
        limiter: UpstreamLimiter,
        delivery: Delivery,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_requeues: int = 5,
        gatekeeper: Gatekeeper | None = None,
        store: Store | None = None,
        cache: ResultCache | None = None,
    ) -> None:
        self._settings = settings
        self._cache = cache
        self._flights = Flights()
        self._gate = gatekeeper
        self._store = store
        #: a job put back by 429s more often than this fails (the bot's jobs have a deadline anyway;
        #: the CLI passes 0: after the client's own retries it reports the failure)
        self._max_requeues = max_requeues
        self.jobs = jobs
        self._images = images
        self._client = client
        self._fetcher = fetcher
        self._delivery = delivery
        self._sleep = sleep
        self.scheduler = Scheduler(limiter, self._run, clock=clock or SystemClock(), on_change=self._queue_changed)
        self._waiters: dict[int, list[asyncio.Future[Job]]] = defaultdict(list)
        self._requeues: dict[int, int] = defaultdict(int)
        self._published: dict[int, tuple[int, int]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._publish_pending = False
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self, *, resume: bool = True) -> None:
        self.scheduler.start()
        if resume:
            await self.resume()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting; let running jobs finish within the grace; the rest stays queued in the store."""
        self._stopping = True
        grace = self._settings.shutdown_grace_s if grace_s is None else grace_s
        waiting = await self.scheduler.stop(grace)
        pending = [task for task in self._background if not task.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
        log.info("service stopped; %d job(s) left queued in the store", len(waiting))

    async def resume(self) -> int:
        """Pick up every unfinished job from the store (after a restart). Returns how many."""
        # Only Discord jobs: a CLI job belongs to its own (finished or crashed) process.
        unfinished = [job for job in await self.jobs.unfinished() if job.guild_id is not None]
        for job in unfinished:
            if job.state == "generated":
                self._spawn(self._deliver(job))
            elif job.state == "submitting" and job.attempts >= 2:
                await self._fail(job, JobInterrupted(messages.INTERRUPTED))
            else:
                self.scheduler.enqueue(self._item_for(job))
        if unfinished:
            log.info("resumed %d unfinished job(s)", len(unfinished))
        return len(unfinished)

    # -- accepting work -------------------------------------------------------------------------------
    async def submit(
        self,
        request: GenerationRequest,
        who: Requester,
        *,
        job_id: int | None = None,
        deadline_s: float | None = None,
        reply: ReplyHandle | None = None,
    ) -> Ticket:
        """Admit and durably queue one request. Raises LimitReached (nothing spent) when refused.

        Order: moderation (block, channel, prompt rules) -> a queue slot -> the quota, reserved
        in the same transaction that writes the job.
        """
        if self._stopping:
            raise ShuttingDown("The bot is restarting; try again in a minute.")
        job_id = job_id if job_id is not None else new_local_id()
        if await self.jobs.get(job_id) is not None:
            return Ticket(job_id, self.scheduler.position(job_id), replayed=True)
        try:
            return await self._admit(request, who, job_id, deadline_s, reply)
        except LimitReached as refusal:
            await self._refused(who, request, refusal)
            raise

    async def _admit(
        self,
        request: GenerationRequest,
        who: Requester,
        job_id: int,
        deadline_s: float | None,
        reply: ReplyHandle | None,
    ) -> Ticket:
        key = await self._cache_key(request.params, request.model, who.guild_id) if request.reroll_of is None else None
        if key is None:  # rerolls always bypass the cache
            return await self._admit_job(request, who, job_id, deadline_s, reply)
        async with self._flights.admitting(key):  # one identical request at a time: one leader
            assert self._cache is not None
            hit = await self._cache.get(key)
            follows = self._flights.leader(key) if hit is None else None
            ticket = await self._admit_job(request, who, job_id, deadline_s, reply, hit=hit, follows=follows)
            if not ticket.replayed and hit is None:
                if follows is None:
                    self._flights.lead(key, job_id)
                else:
                    self._flights.follow(key, job_id)
            return ticket

    async def _admit_job(
        self,
        request: GenerationRequest,
        who: Requester,
        job_id: int,
        deadline_s: float | None,
        reply: ReplyHandle | None,
        *,
        hit: CacheHit | None = None,
        follows: int | None = None,
    ) -> Ticket:
        """Moderation, then a queue slot (not needed by cache hits and followers), then the quota."""
        charges: list[Charge] = []
        cooldown: Cooldown | None = None
        if who.guild_id is not None and who.user_id is not None and self._gate is not None:
            await self._gate.screen(who.guild_id, who.user_id, who.channel_id, _screened_fields(request))
            charges, cooldown_ms = await self._gate.charges(who.guild_id, who.user_id, who.role_ids)
            if hit is not None or follows is not None:  # free: no money; images only if hits count
                counts = (await self._gate.policy(who.guild_id)).cache_counts_toward_limits
                charges = [c for c in charges if counts and c.scope in _IMAGE_SCOPES]
            if cooldown_ms:
                cooldown = Cooldown(f"{who.guild_id}:{who.user_id}", self._gate.now_ms(), cooldown_ms)
        reservation = None
        if hit is None and follows is None:
            try:
                reservation = self.scheduler.reserve(
                    who.guild_key,
                    who.requester,
                    guild_queue_max=self._settings.guild_queue_max,
                    user_pending_max=self._settings.user_pending_max,
                    deadline_s=deadline_s,
                )
            except QueueRefusal as refusal:
                raise _limit_for(refusal, self._settings) from None
        try:
            inserted = await self.jobs.insert(_new_job(job_id, request, who, reply), charges=charges, cooldown=cooldown)
        except BaseException as exc:
            if reservation is not None:
                self.scheduler.cancel(reservation)
            if isinstance(exc, QuotaExceeded):
                assert self._gate is not None and who.guild_id is not None
                raise await self._gate.explain(who.guild_id, exc) from None
            if isinstance(exc, CooldownActive):
                assert self._gate is not None
                raise self._gate.cooldown_refusal(exc.last_ms, exc.cooldown_ms) from None
            raise
        if not inserted:  # a concurrent replay of the same interaction won the insert
            if reservation is not None:
                self.scheduler.cancel(reservation)
            return Ticket(job_id, self.scheduler.position(job_id), replayed=True)
        if hit is not None:
            await self.jobs.mark_cache_hit(job_id, sha256=hit.sha256, request_id=hit.request_id)
            self._spawn(self._deliver_by_id(job_id))
            return Ticket(job_id, None, cached=True)
        if follows is not None:
            position = self.scheduler.position(follows)
            job = await self.jobs.get(job_id)
            if job is not None:
                self._notify(self._delivery.queued(job, position) if position else self._delivery.started(job))
            return Ticket(job_id, position, cached=True)
        assert reservation is not None
        self.scheduler.activate(reservation, job_id)
        return Ticket(job_id, self.scheduler.position(job_id))

    async def _refused(self, who: Requester, request: GenerationRequest, refusal: LimitReached) -> None:
        """Every refusal is recorded for the admins' report; moderation ones go to the log channel."""
        if who.guild_id is None or self._gate is None:
            return
        try:
            await self._gate.guilds.record_refusal(who.guild_id, who.user_id, refusal.limit, refusal.message)
            if isinstance(refusal, RuleRefusal):
                rule = refusal.match.rule
                await self._mod_log(
                    who.guild_id,
                    f"🚫 Refused <@{who.user_id}> in <#{who.channel_id}> by rule #{rule.id} ({rule.kind} "
                    f"`{rule.pattern}`, in the {refusal.match.field.replace('_', ' ')}): "
                    f"{_excerpt(_screened_fields(request).get(refusal.match.field) or request.params.prompt)}",
                )
        except Exception:
            log.exception("could not record a refusal")

    async def _mod_log(self, guild_id: int, text: str) -> None:
        """Post to the guild's moderation log channel, if it has one (best effort)."""
        if self._gate is None:
            return
        channel_id = (await self._gate.policy(guild_id)).log_channel_id
        if channel_id is not None:
            await self._delivery.moderation(channel_id, text)

    async def post_to_mod_log(self, guild_id: int, text: str) -> None:
        try:
            await self._mod_log(guild_id, text)
        except Exception:
            log.exception("could not post to the moderation log of guild %s", guild_id)

    async def usage(self, who: Requester) -> Usage:
        """What /usage shows: the caller's images today and this month, and the guild's budget."""
        assert self._gate is not None and who.guild_id is not None and who.user_id is not None
        charges, _ = await self._gate.charges(who.guild_id, who.user_id, who.role_ids)
        used = await counters(self._store, [(c.scope, c.subject, c.period) for c in charges])
        return await self._gate.usage(who.guild_id, who.user_id, who.role_ids, used)

    def queue_status(self, who: Requester) -> QueueStatus:
        """What /queue shows: this server's queue, the caller's places, the wait for a new request."""
        scheduler = self.scheduler
        waiting = scheduler.waiting(who.guild_key)
        mine = [scheduler.position(item.job_id) for item in waiting if item.user_key == who.requester]
        return QueueStatus(
            running=len(scheduler.running(who.guild_key)),
            waiting=len(waiting),
            mine=[position for position in mine if position is not None],
            new_request_wait_s=scheduler.wait_for_new_job(who.guild_key, who.requester),
        )

    async def wait(self, job_id: int) -> Job:
        """Wait until the job is delivered or failed (the CLI waits this way)."""
        job = await self.jobs.get(job_id)
        if job is not None and job.finished:
            return job
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._waiters[job_id].append(future)
        return await future

    # -- running a job (called by the scheduler, holding an upstream permit) ---------------------------
    async def _run(self, item: QueueItem, gate: Gate) -> None:
        job = await self.jobs.get(item.job_id)
        if job is None or job.finished:
            return
        try:
            if job.state == "queued" and await self._take_flight(job):
                return  # answered from the cache, or following an identical job in flight
            if job.state != "generated":
                generated = await self._generate(job, gate)
                if generated is None:
                    return
                job = generated
            await self._deliver(job)
        except RateLimited:
            raise  # the scheduler puts the job back at the head of its queue
        except Exception as exc:  # a bug must fail one job, never the bot
            log.exception("job %s failed unexpectedly", job.id)
            await self._fail(job, exc)

    async def _generate(self, job: Job, gate: Gate) -> Job | None:
        if not await self.jobs.mark_submitting(job.id):
            return None
        self._notify(self._delivery.started(job))
        request = ImageRequest(
            model=job.model,
            prompt=job.prompt,
            size=job.size,
            negative_prompt=job.negative_prompt,
            prompt_extend=job.prompt_extend,
            watermark=job.watermark,
        )
        try:
            response = await self._client.generate(request, gate=gate)
        except RateLimited as exc:
            self._requeues[job.id] += 1
            if self._requeues[job.id] <= self._max_requeues:
                await self.jobs.mark_queued_again(job.id)
                log.warning(
                    "job %s: upstream busy (request_id=%s); back to the head of its queue",
                    job.id,
                    exc.request_id,
                )
                self._published.pop(job.id, None)
                raise
            await self._fail(job, exc)
            return None
        except UpstreamError as exc:
            await self._fail(job, exc)
            return None
        image = response.first
        # The URL and request id are durable before anything else happens: from here on a restart
        # re-fetches and re-delivers, and never pays for a second generation.
        await self.jobs.mark_generated(
            job.id,
            request_id=response.request_id,
            image_url=image.url,
            revised_prompt=image.revised_prompt,
            upstream_fen=self._settings.price_per_image_fen,
        )
        if not image.url:
            try:
                inline = await asyncio.to_thread(
                    self._fetcher.decode_b64, image.b64_json, request_id=response.request_id
                )
            except ImageDownloadError as exc:
                await self._fail(await self._reload(job), exc)
                return None
            await self.jobs.set_image(job.id, await self._images.put(inline.data))
        return await self._reload(job)

    async def _deliver(self, job: Job) -> None:
        try:
            image, sha256 = await self._image_for(job)
        except ImagineError as exc:
            await self._fail(job, exc)
            return
        if not job.cache_hit:
            await self._share(job, image, sha256)
        for attempt in range(self.DELIVERY_RETRIES + 1):
            try:
                await self._delivery.deliver(job, image)
                break
            except DeliveryError as exc:
                if not exc.retryable or attempt == self.DELIVERY_RETRIES:
                    log.warning("job %s: delivery failed for good: %s", job.id, exc)
                    await self._fail(job, ImagineError(messages.DELIVERY_FAILED))
                    return
                log.warning("job %s: delivery failed (%s); retrying from the stored image", job.id, exc)
                await self._sleep(0.5 * 2**attempt)
        if job.cache_hit:
            await self.jobs.mark_delivered(job.id, cost_fen=0, refund_scopes=await self._hit_refunds(job))
        else:
            await self.jobs.mark_delivered(job.id, cost_fen=self._settings.price_per_image_fen)
        await self._release_image(sha256)
        self._finished(job.id)

    # -- the result cache and shared flights -----------------------------------------------------
    async def _cache_key(self, params: ImageParams, model: str, guild_id: int | None) -> str | None:
        """The request's cache key, or None when the cache is off (for everyone, or for this guild)."""
        if self._cache is None or self._settings.cache_ttl_hours <= 0:
            return None
        if guild_id is not None and self._gate is not None and not (await self._gate.policy(guild_id)).cache_enabled:
            return None
        return cache_key(params, model=model)

    async def _job_cache_key(self, job: Job) -> str | None:
        params = ImageParams(
            prompt=job.prompt,
            size=job.size,
            negative_prompt=job.negative_prompt,
            prompt_extend=job.prompt_extend,
            watermark=job.watermark,
            style=job.style or "",
        )
        return await self._cache_key(params, job.model, job.guild_id)

    async def _take_flight(self, job: Job) -> bool:
        """A queued job about to run (e.g. re-queued after a restart) joins single-flight now.

        True when it needs no generation of its own: answered from the cache, or following an
        identical job already in flight. Otherwise it leads, and a former follower (which
        reserved no money) reserves its share of the budget first.
        """
        if job.reroll_of is not None or self._flights.key_of(job.id) is not None or self._cache is None:
            return False  # rerolls always generate; a leader already holds its flight
        key = await self._job_cache_key(job)
        if key is None:
            return False
        async with self._flights.admitting(key):
            hit = await self._cache.get(key)
            if hit is None:
                if self._flights.leader(key) is not None:
                    self._flights.follow(key, job.id)
                    return True
                self._flights.lead(key, job.id)
                return not await self._reserve_money(job)
            if not await self.jobs.mark_cache_hit(job.id, sha256=hit.sha256, request_id=hit.request_id):
                return False
        await self._deliver_by_id(job.id)
        return True

    async def _reserve_money(self, job: Job) -> bool:
        """Reserve the budget a job about to be generated has not reserved yet; False if it failed."""
        if job.guild_id is None or job.user_id is None or self._gate is None:
            return True
        charges, _ = await self._gate.charges(job.guild_id, job.user_id, ())
        try:
            await self.jobs.add_charges(job.id, [c for c in charges if c.scope in _MONEY_SCOPES])
        except QuotaExceeded as exc:
            await self._fail(job, await self._gate.explain(job.guild_id, exc))
            return False
        return True

    async def _share(self, job: Job, image: DownloadedImage, sha256: str) -> None:
        """A new image: into the cache, and to every identical request waiting on this one."""
        key = self._flights.key_of(job.id) or await self._job_cache_key(job)
        if key is not None and self._cache is not None:
            await self._cache.put(key, sha256, len(image.data), job_id=job.id, request_id=job.request_id)
        for follower in self._flights.land(job.id):
            if await self.jobs.mark_cache_hit(follower, sha256=sha256, request_id=job.request_id):
                self._spawn(self._deliver_by_id(follower))

    async def _hit_refunds(self, job: Job) -> frozenset[str]:
        """A cache hit costs nothing: money reserved is given back, images too unless the guild counts hits."""
        counts = False
        if job.guild_id is not None and self._gate is not None:
            counts = (await self._gate.policy(job.guild_id)).cache_counts_toward_limits
        return _MONEY_SCOPES if counts else _MONEY_SCOPES | _IMAGE_SCOPES

    async def _release_image(self, sha256: str) -> None:
        """Delete a delivered image unless the cache keeps it or another job still needs it."""
        if self._cache is not None and await self._cache.holds(sha256):
            return
        if not await self.jobs.image_in_use(sha256):
            await self._images.delete(sha256)

    async def _deliver_by_id(self, job_id: int) -> None:
        job = await self.jobs.get(job_id)
        if job is not None and job.state == "generated":
            await self._deliver(job)

    async def _image_for(self, job: Job) -> tuple[DownloadedImage, str]:
        """The stored bytes if we have them, else a fresh download of the URL (then stored)."""
        if job.image_sha256:
            data = await self._images.get(job.image_sha256)
            kind = sniff_kind(data) if data else None
            if data is not None and kind is not None:
                return DownloadedImage(data=data, kind=kind), job.image_sha256
        if not job.image_url:
            raise ImageLost("The generated image was lost before it could be delivered. " + messages.NOT_CHARGED)
        image = await self._fetcher.fetch(job.image_url, request_id=job.request_id)
        sha256 = await self._images.put(image.data)
        await self.jobs.set_image(job.id, sha256)
        return image, sha256

    async def _fail(self, job: Job, error: BaseException, *, shared: bool = False) -> None:
        job = await self._reload(job)  # the current row, with its reply token (erased by mark_failed)
        request_id = getattr(error, "request_id", None)
        code = type(error).__name__
        log.warning(
            "job %s failed: %s: %s (request_id=%s)",
            job.id,
            code,
            getattr(error, "message", error),
            request_id or "-",
        )
        hint = messages.operator_hint(error)
        if hint:
            log.error("operator action needed: %s", hint)
        await self.jobs.mark_failed(
            job.id,
            error_code=code,
            error_message=str(getattr(error, "message", error)),
            request_id=request_id,
        )
        if job.image_sha256:
            await self._release_image(job.image_sha256)
        for follower in self._flights.land(job.id):  # identical requests waiting on this one fail alike
            follower_job = await self.jobs.get(follower)
            if follower_job is not None:
                self._spawn(self._fail(follower_job, error, shared=True))
        try:
            await self._delivery.failed(job, error)
        except Exception:
            log.exception("job %s: could not report the failure", job.id)
        if isinstance(error, ContentRejected) and job.guild_id is not None and not shared:
            await self.post_to_mod_log(
                job.guild_id,
                f"⚠️ The provider refused a prompt of <@{job.user_id}> (content safety, request "
                f"`{request_id or '-'}`): {_excerpt(job.prompt)}",
            )
        self._finished(job.id)

    # -- queue positions ---------------------------------------------------------------------------
    def _queue_changed(self) -> None:
        """Called by the scheduler on every change; coalesced into one publish per loop turn."""
        if self._publish_pending or self._stopping:
            return
        self._publish_pending = True
        asyncio.get_running_loop().call_soon(self._publish_positions)

    def _publish_positions(self) -> None:
        self._publish_pending = False
        for job_id, position in self.scheduler.positions().items():
            # Tell the user only when their place changes (Discord limits edits per interaction).
            place = (position.guild_position, position.global_position)
            if self._published.get(job_id) == place:
                continue
            self._published[job_id] = place
            self._notify(self._report_position(job_id, position))

    async def _report_position(self, job_id: int, position: QueuePosition) -> None:
        job = await self.jobs.get(job_id)
        if job is not None and job.state == "queued":
            await self._delivery.queued(job, position)

    # -- helpers ---------------------------------------------------------------------------------
    def _finished(self, job_id: int) -> None:
        self._published.pop(job_id, None)
        self._requeues.pop(job_id, None)
        for future in self._waiters.pop(job_id, []):
            if not future.done():
                self._spawn(self._resolve(future, job_id))

    async def _resolve(self, future: asyncio.Future[Job], job_id: int) -> None:
        job = await self.jobs.get(job_id)
        if job is not None and not future.done():
            future.set_result(job)

    async def _reload(self, job: Job) -> Job:
        return await self.jobs.get(job.id) or job

    def _item_for(self, job: Job) -> QueueItem:
        guild_key = f"guild:{job.guild_id}" if job.guild_id is not None else CLI_GUILD
        return QueueItem(job_id=job.id, guild_key=guild_key, user_key=job.requester, enqueued_at=0.0)

    def _notify(self, awaitable: Awaitable[None]) -> None:
        """Progress messages are best effort: they never hold up or fail the job."""

        async def guarded() -> None:
            try:
                await awaitable
            except Exception:
                log.exception("progress update failed")

        self._spawn(guarded())

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _new_job(job_id: int, request: GenerationRequest, who: Requester, reply: ReplyHandle | None) -> NewJob:
    params = request.params
    return NewJob(
        id=job_id,
        requester=who.requester,
        command=request.command,
        model=request.model,
        prompt=params.prompt,
        size=params.size,
        negative_prompt=params.negative_prompt,
        prompt_extend=params.prompt_extend,
        watermark=params.watermark,
        style=params.style,
        guild_id=who.guild_id,
        channel_id=who.channel_id,
        user_id=who.user_id,
        inputs=dict(request.inputs),
        reroll_of=request.reroll_of,
        interaction_token=reply.token if reply else None,
        token_expires_at=iso(reply.expires_at) if reply else None,
        message_id=reply.message_id if reply else None,
    )


def _screened_fields(request: GenerationRequest) -> dict[str, str | None]:
    """What prompt rules look at: the prompt, the negative prompt and the command's own fields."""
    fields: dict[str, str | None] = {
        "prompt": request.params.prompt,
        "negative_prompt": request.params.negative_prompt,
    }
    fields.update({name: str(value) for name, value in request.inputs.items()})
    return fields


def _excerpt(text: str, limit: int = 200) -> str:
    return "> " + (text if len(text) <= limit else text[: limit - 1] + "…").replace("\n", " ")


def _limit_for(refusal: QueueRefusal, settings: Settings) -> LimitReached:
    wait = max(1, round(refusal.retry_after_s or 60))
    if refusal.reason == "guild_queue_full":
        text = f"This server's queue is full ({settings.guild_queue_max} waiting). Try again in about {wait} s."
    elif refusal.reason == "user_pending":
        text = (
            f"You already have {settings.user_pending_max} image(s) queued or generating. "
            "Wait for one to finish, then try again."
        )
    else:
        text = (
            "The queue is too long to finish your image before Discord's 15-minute reply window closes. "
            f"Try again in about {wait} s."
        )
    return LimitReached(text, limit=refusal.reason)
