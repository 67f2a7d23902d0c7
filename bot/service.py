"""The generation service: the one pipeline behind the slash commands and the CLI (no discord).

submit() admits a request (moderation, a queue slot, the quota reserved with the durable
`queued` row in one transaction) and hands it to the scheduler, or answers it from the result
cache, or lets it follow an identical request already in flight. The scheduler runs jobs
through `JobRunner` (bot/runner.py) under the upstream limiter. A `Delivery` (the CLI's file
writer, or the Discord layer) is told about every step.

Nothing lost, paid once: a graceful stop lets requests already sent upstream finish; after a
restart `resume()` re-queues queued jobs in order, resubmits a job caught mid-request by a crash
at most once (the only way to pay for an image twice), and only re-delivers generated jobs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Literal

from bot import messages
from bot.background import Background
from bot.cache import ResultCache
from bot.clock import Clock, SystemClock
from bot.config import Settings
from bot.contracts import (
    Acknowledge,
    Delivery,
    JobInterrupted,
    QueueStatus,
    ReplyHandle,
    Requester,
    ShuttingDown,
    Ticket,
    guild_key,
)
from bot.errors import LimitReached
from bot.gatekeeper import Gatekeeper, RuleRefusal, Usage
from bot.i18n import Number, Text
from bot.imaging.client import ImageClient
from bot.imaging.download import ImageFetcher
from bot.limiter import UpstreamLimiter
from bot.log_fields import job_fields
from bot.metrics import Metrics
from bot.modlog import ModerationLog, excerpt
from bot.presets import field_name
from bot.requests import GenerationRequest
from bot.runner import IMAGE_SCOPES, JobRunner
from bot.scheduler import QueueItem, QueuePosition, QueueRefusal, Reservation, Scheduler
from bot.shared_scheduler import SharedScheduler
from bot.sharing import Choice, ResultSharing
from bot.storage.db import Store, iso
from bot.storage.images import ImageStore
from bot.storage.jobs import CANCELLED, Cooldown, CooldownActive, Job, JobStore, NewJob, new_local_id
from bot.storage.quotas import Charge, QuotaExceeded
from bot.storage.reports import counters
from bot.storage.shared_queue import Reclaimed, SharedQueue

log = logging.getLogger("imagine.service")

#: what a cancel came to: done, too late (taken to be sent), already over, or no such job
CancelOutcome = Literal["cancelled", "started", "finished", "gone"]
#: the ledger's error_code of a job withdrawn because its interaction could not be acknowledged
NOT_ACKNOWLEDGED = "NotAcknowledged"
#: how often wait() asks the store whether another process finished the job (shared queue)
WAIT_POLL_S = 0.25
#: queue positions are published this long after a change (changes in between are coalesced)
POSITION_DEBOUNCE_S = 0.25
#: the first places of a guild's queue see every move; the rest at most every DISTANT_PLACE_EVERY_S
NEAR_PLACES = 10
DISTANT_PLACE_EVERY_S = 10.0


class GenerationService:
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
        shared_queue: SharedQueue | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self.metrics = metrics or Metrics()
        self.jobs = jobs
        self._delivery = delivery
        self._gate = gatekeeper
        self._store = store
        self.sharing = ResultSharing(settings, cache, gatekeeper, follow=shared_queue is None)
        self.background = Background()
        self._mod_log = ModerationLog(gatekeeper, delivery)
        self.runner = JobRunner(
            settings=settings,
            jobs=jobs,
            images=images,
            client=client,
            fetcher=fetcher,
            delivery=delivery,
            background=self.background,
            mod_log=self._mod_log,
            sharing=self.sharing,
            on_finished=self._finished,
            on_requeued=self._forget_position,
            gatekeeper=gatekeeper,
            sleep=sleep,
            max_requeues=max_requeues,
            metrics=self.metrics,
        )
        clock = clock or SystemClock()
        # A shared queue (PostgreSQL): any process may run any job, claimed from the store; else
        # this process holds its own queue in memory.
        self.scheduler: Scheduler = (
            SharedScheduler(
                limiter,
                self.runner.run,
                clock=clock,
                on_change=self._queue_changed,
                shared=shared_queue,
                on_reclaimed=self._take_over,
            )
            if shared_queue is not None
            else Scheduler(limiter, self.runner.run, clock=clock, on_change=self._queue_changed)
        )
        self._mine: set[int] = set()  # jobs admitted here: their users see positions from this process
        self._waiters: dict[int, list[asyncio.Future[Job]]] = defaultdict(list)
        self._published: dict[int, tuple[int, int]] = {}
        self._published_at: dict[int, float] = {}
        self._publish_pending = False
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self, *, resume: bool = True) -> None:
        self.scheduler.start()
        if resume:
            await self.resume()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting. Requests already sent upstream run to completion (their images stored
        and delivered); deliveries get the grace; the rest stays queued in the store."""
        self._stopping = True
        grace = self._settings.shutdown_grace_s if grace_s is None else grace_s
        waiting = await self.scheduler.stop(grace)
        await self.background.drain(grace)
        log.info("service stopped; %d job(s) left queued in the store", len(waiting))

    def force_stop(self) -> None:
        """Stop now (a second signal): requests in flight are abandoned, so each may be generated
        (and billed) once more after the restart."""
        self._stopping = True
        self.scheduler.force()
        for task in list(self.background.tasks):
            task.cancel()

    @property
    def accepting(self) -> bool:
        """False once stopping: new requests are refused."""
        return not self._stopping

    async def resume(self) -> int:
        """Pick up every unfinished job from the store (after a restart). Returns how many.

        With a shared queue the queue already is in the store: only the jobs of dead processes
        (leases run out) are taken back, now and then every few seconds."""
        if isinstance(self.scheduler, SharedScheduler):
            await self.scheduler.reclaim()
            return 0
        # Only Discord jobs: a CLI job belongs to its own (finished or crashed) process.
        unfinished = [job for job in await self.jobs.unfinished() if job.guild_id is not None]
        for job in unfinished:
            if job.state == "generated":
                self.background.spawn(self.runner.deliver(job))
            elif job.state == "submitting" and job.attempts >= 2:
                await self.runner.fail(job, JobInterrupted(messages.INTERRUPTED))
            else:
                self.scheduler.enqueue(self._item_for(job))
        if unfinished:
            log.info("resumed %d unfinished job(s)", len(unfinished))
        return len(unfinished)

    async def _take_over(self, reclaimed: Reclaimed) -> None:
        """A dead process's job that this one must finish (the queued ones went back to the queue)."""
        job = await self.jobs.get(reclaimed.job_id)
        if job is None or job.finished:
            return
        if job.state == "generated":
            self.background.spawn(self.runner.deliver_by_id(job.id))
        elif job.state == "submitting":  # interrupted twice: not sent a third time
            await self.runner.fail(job, JobInterrupted(messages.INTERRUPTED))

    # -- accepting work -------------------------------------------------------------------------------
    async def submit(
        self,
        request: GenerationRequest,
        who: Requester,
        *,
        job_id: int | None = None,
        deadline_s: float | None = None,
        reply: ReplyHandle | None = None,
        acknowledge: Acknowledge | None = None,
    ) -> Ticket:
        """Admit and durably queue one request. Raises LimitReached (nothing spent) when refused.

        Order: moderation (block, channel, prompt rules) -> the cache decision -> a queue slot ->
        the quota, reserved in the same transaction that writes the job -> `acknowledge()` (the
        Discord layer's public "thinking…", which answers with the reply's message id) -> the
        job joins the queue. Everything that can refuse runs before the acknowledgement, so a
        refusal can be the interaction's one and only (private) response.
        """
        if self._stopping:
            self.metrics.request_refused(request.command, "shutting_down")
            raise ShuttingDown(Text("error.restarting"))
        if not self.scheduler.healthy:  # jobs would only wait in a queue nothing takes from
            self.metrics.request_refused(request.command, "stalled")
            raise LimitReached(messages.STALLED, limit="stalled")
        job_id = job_id if job_id is not None else new_local_id()
        if await self.jobs.get(job_id) is not None:
            log.info("job %s exists already (a replayed interaction): nothing new queued", job_id)
            return Ticket(job_id, replayed=True, locate=self._locate(job_id))
        try:
            key = await self.sharing.key(
                request.params, request.model, who.guild_id, reroll=request.reroll_of is not None
            )
            async with self.sharing.choose(key) as choice:
                return await self._admit(request, who, job_id, deadline_s, reply, acknowledge, choice)
        except LimitReached as refusal:
            self.metrics.request_refused(request.command, refusal.limit)
            self.background.spawn(self._refused(who, request, refusal))  # the user's answer goes first
            raise

    async def _admit(
        self,
        request: GenerationRequest,
        who: Requester,
        job_id: int,
        deadline_s: float | None,
        reply: ReplyHandle | None,
        acknowledge: Acknowledge | None,
        choice: Choice,
    ) -> Ticket:
        if self._gate is not None and who.guild_id is not None:  # a forbidden private request is refused here
            spoiler = await self._gate.presentation(
                who.guild_id, who.channel_id, private=request.private, spoiler=request.spoiler
            )
            request = dataclasses.replace(request, spoiler=spoiler)
        charges, cooldown = await self._limits(request, who, choice)
        reservation = None
        if not choice.free:  # cache hits and followers make no upstream call: no queue slot
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
            return Ticket(job_id, replayed=True, locate=self._locate(job_id))
        if acknowledge is not None:
            await self._acknowledge(job_id, request.command, acknowledge, reservation)
        ticket = await self._activate(job_id, reservation, choice)
        how = "answered from the cache" if choice.hit is not None else "following an identical request"
        log.info(
            "job %s accepted: %s",
            job_id,
            how if ticket.cached else "queued",
            extra={"job_id": job_id, "guild_id": who.guild_id, "user_id": who.user_id, "state": "queued"},
        )
        return ticket

    async def _limits(
        self, request: GenerationRequest, who: Requester, choice: Choice
    ) -> tuple[list[Charge], Cooldown | None]:
        """Moderation (raises Refused), then the counters the job must fit in and the cooldown."""
        if who.guild_id is None or who.user_id is None or self._gate is None:
            return [], None
        await self._gate.screen(who.guild_id, who.user_id, who.channel_id, _screened_fields(request))
        charges, cooldown_ms = await self._gate.charges(who.guild_id, who.user_id, who.role_ids)
        if choice.free:  # no money; images only if the guild counts cache hits
            counts = (await self._gate.policy(who.guild_id)).cache_counts_toward_limits
            charges = [c for c in charges if counts and c.scope in IMAGE_SCOPES]
        cooldown = Cooldown(f"{who.guild_id}:{who.user_id}", self._gate.now_ms(), cooldown_ms) if cooldown_ms else None
        return charges, cooldown

    async def _acknowledge(
        self, job_id: int, command: str, acknowledge: Acknowledge, reservation: Reservation | None
    ) -> None:
        """The accepted job's public acknowledgement; if it cannot be made, the job is withdrawn."""
        try:
            message_id = await acknowledge()
        except BaseException:
            if reservation is not None:
                self.scheduler.cancel(reservation)
            # the user never saw the job: give back what it reserved, and stop here
            await asyncio.shield(self._withdraw(job_id, command))
            log.warning("job %s withdrawn: the interaction could not be acknowledged", job_id)
            raise
        if message_id is not None:
            try:
                await self.jobs.set_message_id(job_id, message_id)
            except Exception:  # not fatal: without it the result is posted in the channel
                log.exception("job %s: could not record its reply message", job_id)

    async def _withdraw(self, job_id: int, command: str) -> None:
        if await self.jobs.mark_failed(
            job_id, error_code=NOT_ACKNOWLEDGED, error_message="the request could not be acknowledged"
        ):
            self.metrics.job_failed(command, NOT_ACKNOWLEDGED)

    async def _activate(self, job_id: int, reservation: Reservation | None, choice: Choice) -> Ticket:
        """The accepted, acknowledged job starts moving: delivered from the cache, following its
        leader, or queued (leading its key, if it has one)."""
        self._mine.add(job_id)
        if choice.hit is not None:
            await self.scheduler.hold(job_id)  # this process delivers it; another would if this one died
            await self.jobs.mark_cache_hit(job_id, sha256=choice.hit.sha256, request_id=choice.hit.request_id)
            self.background.spawn(self.runner.deliver_by_id(job_id))
            return Ticket(job_id, cached=True)
        if choice.leader is not None:
            await self.scheduler.hold(job_id)
            if choice.follow(job_id):
                position = self.scheduler.position(choice.leader)
                job = await self.jobs.get(job_id)
                if job is not None:
                    self.background.notify(
                        self._delivery.queued(job, position) if position else self._delivery.started(job)
                    )
                return Ticket(job_id, cached=True, locate=self._locate(choice.leader))
            # the leader landed meanwhile: queue it; it decides again when it runs (a cache hit, likely)
            job = await self.jobs.get(job_id)
            assert job is not None
            await self.scheduler.requeue(self._item_for(job))
            return Ticket(job_id, locate=self._locate(job_id))
        assert reservation is not None
        choice.lead(job_id)
        await self.scheduler.admit(reservation, job_id)
        return Ticket(job_id, locate=self._locate(job_id))

    async def cancel(self, job_id: int) -> CancelOutcome:
        """Cancel a job that is still waiting: it leaves the queue and gets back what it reserved
        (one transaction, bot/storage/jobs.py), and its message says so. Once it was taken to be
        sent (dispatched here, claimed by any process on a shared queue) it cannot be: exactly one
        of the dispatcher and the cancel wins."""
        job = await self.jobs.get(job_id)  # before the cancel erases the reply token the message needs
        if job is None:
            return "gone"
        if job.finished:
            return "finished"
        if isinstance(self.scheduler, SharedScheduler):
            cancelled = await self.jobs.cancel(job_id)  # the row's condition decides against a claim
            if cancelled:
                await self.scheduler.refresh()
        else:
            # In memory the queue decides: taken out here, the dispatch loop can no longer pop it (no
            # await in between); not in it, it was popped already, or it follows an identical request.
            item = self.scheduler.remove(job_id)
            if item is None:
                return "started"
            cancelled = await self.jobs.cancel(job_id)
            if not cancelled and not await self._finished_in_store(job_id):
                self.scheduler.enqueue(item, front=True)  # not ours to drop: its turn is kept
        if not cancelled:
            return "finished" if await self._finished_in_store(job_id) else "started"
        self.metrics.job_failed(job.command, CANCELLED)
        log.info("job %s cancelled while queued", job_id, extra=job_fields(job, state="cancelled", cost_fen=0))
        # identical requests that waited on it are queued again: each decides anew when it runs
        for follower in self.sharing.land(job_id):
            waiting = await self.jobs.get(follower)
            if waiting is not None and not waiting.finished:
                await self.scheduler.requeue(self._item_for(waiting))
        self._finished(job_id)
        try:
            await self._delivery.cancelled(job)
        except Exception:
            log.exception("job %s: cancelled, but its message could not say so", job_id)
        return "cancelled"

    async def _finished_in_store(self, job_id: int) -> bool:
        current = await self.jobs.get(job_id)
        return current is None or current.finished

    async def _refused(self, who: Requester, request: GenerationRequest, refusal: LimitReached) -> None:
        """Every refusal is recorded for the admins' report; moderation ones go to the log channel."""
        log.info(
            "request of %s refused (%s)",
            who.requester,
            refusal.limit or "refused",
            extra={"guild_id": who.guild_id, "user_id": who.user_id, "state": "refused"},
        )
        if who.guild_id is None or self._gate is None:
            return
        try:
            await self._gate.guilds.record_refusal(who.guild_id, who.user_id, refusal.limit, str(refusal.message))
            if isinstance(refusal, RuleRefusal):
                rule = refusal.match.rule
                text = Text(
                    "modlog.rule_refusal",
                    user=who.user_id,
                    channel=who.channel_id,
                    id=rule.id,
                    kind=rule.kind,
                    pattern=rule.pattern,
                    field=field_name(refusal.match.field),
                    excerpt=excerpt(_screened_fields(request).get(refusal.match.field) or request.params.prompt),
                )
                await self._mod_log.post(who.guild_id, text, who.guild_locale)
        except Exception:
            log.exception("could not record a refusal")

    async def post_to_mod_log(self, guild_id: int, text: str, guild_locale: str | None = None) -> None:
        """A line in the guild's moderation log, in the server's language (`guild_locale`, Discord's code)."""
        await self._mod_log.post(guild_id, text, guild_locale)

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
        """Wait until the job is delivered or failed (the CLI waits this way). With a shared
        queue another process may run it: the store is asked too, every WAIT_POLL_S."""
        job = await self.jobs.get(job_id)
        if job is not None and job.finished:
            return job
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._waiters[job_id].append(future)
        if not isinstance(self.scheduler, SharedScheduler):
            return await future
        try:
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(future), WAIT_POLL_S)
                except TimeoutError:
                    job = await self.jobs.get(job_id)
                    if job is not None and job.finished:
                        return job
        finally:
            if future in self._waiters.get(job_id, []):
                self._waiters[job_id].remove(future)

    # -- queue positions ---------------------------------------------------------------------------
    def _queue_changed(self) -> None:
        """Called by the scheduler on every change; coalesced into one publish per short while, so
        a job dispatched at once never flashes "Queued", and a busy queue is not re-edited per move."""
        if self._publish_pending or self._stopping:
            return
        self._publish_pending = True
        asyncio.get_running_loop().call_later(POSITION_DEBOUNCE_S, self._publish_positions)

    def _publish_positions(self) -> None:
        self._publish_pending = False
        now = asyncio.get_running_loop().time()
        shared = isinstance(self.scheduler, SharedScheduler)
        for job_id, position in self.scheduler.positions().items():
            if shared and job_id not in self._mine:
                continue  # another process admitted it: its user hears from that one
            # Tell the user only when their place changes (Discord limits edits per interaction);
            # far back in a long queue, at most every DISTANT_PLACE_EVERY_S (a burst of edits
            # for hundreds of waiting jobs on every start would compete with acknowledgements).
            place = (position.guild_position, position.global_position)
            previous = self._published.get(job_id)
            if previous == place:
                continue
            distant = position.guild_position > NEAR_PLACES
            if previous is not None and distant and now - self._published_at.get(job_id, 0.0) < DISTANT_PLACE_EVERY_S:
                continue
            self._published[job_id] = place
            self._published_at[job_id] = now
            self.background.notify(self._report_position(job_id, position))

    async def _report_position(self, job_id: int, position: QueuePosition) -> None:
        job = await self.jobs.get(job_id)
        if job is not None and job.state == "queued":
            await self._delivery.queued(job, position)

    # -- helpers ---------------------------------------------------------------------------------
    def _forget_position(self, job_id: int) -> None:
        self._published.pop(job_id, None)
        self._published_at.pop(job_id, None)

    def _finished(self, job_id: int) -> None:
        self._mine.discard(job_id)
        self._forget_position(job_id)
        for future in self._waiters.pop(job_id, []):
            if not future.done():
                self.background.spawn(self._resolve(future, job_id))

    async def _resolve(self, future: asyncio.Future[Job], job_id: int) -> None:
        job = await self.jobs.get(job_id)
        if job is not None and not future.done():
            future.set_result(job)

    def _locate(self, job_id: int) -> Callable[[], QueuePosition | None]:
        return lambda: self.scheduler.position(job_id)

    def _item_for(self, job: Job) -> QueueItem:
        return QueueItem(job_id=job.id, guild_key=guild_key(job.guild_id), user_key=job.requester, enqueued_at=0.0)


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
        locale=who.locale,
        guild_locale=who.guild_locale,
        private=request.private,
        spoiler=request.spoiler,
        sources=dict(request.sources),
    )


def _screened_fields(request: GenerationRequest) -> dict[str, str | None]:
    """What prompt rules look at: the prompt, the negative prompt and the command's own fields."""
    fields: dict[str, str | None] = {
        "prompt": request.params.prompt,
        "negative_prompt": request.params.negative_prompt,
    }
    fields.update({name: str(value) for name, value in request.inputs.items()})
    return fields


def _limit_for(refusal: QueueRefusal, settings: Settings) -> LimitReached:
    wait = max(1, round(refusal.retry_after_s or 60))
    if refusal.reason == "guild_queue_full":
        text = Text("refusal.guild_queue_full", waiting=Number(settings.guild_queue_max), seconds=Number(wait))
    elif refusal.reason == "user_pending":
        text = Text("refusal.user_pending", pending=Number(settings.user_pending_max))
    else:
        text = Text("refusal.too_long_wait", seconds=Number(wait))
    return LimitReached(text, limit=refusal.reason)
