"""Limits, refunds and moderation through GenerationService.submit (real store, fake image API, injected clock).

A recording `Delivery` stands in for Discord. The wall clock (periods, blocks, cooldowns, row timestamps) is
injected; unless a test needs jobs to run, the scheduler is not started, so accepted jobs stay queued.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.admin import GuildAdmin
from bot.config import Settings
from bot.contracts import Requester
from bot.errors import LimitReached
from bot.gatekeeper import Gatekeeper, Refused, RuleRefusal
from bot.imaging.errors import ContentRejected
from bot.limits import discord_time
from bot.moderation import Rule
from bot.pipeline import Pipeline
from bot.requests import RequestBuilder
from bot.scheduler import QueuePosition
from bot.storage.connect import open_store
from bot.storage.db import Store
from bot.storage.guilds import GuildStore
from bot.storage.images import OpenImage
from bot.storage.jobs import Job
from tests.fakes.image_api import FakeImageApi, Reply

pytestmark = pytest.mark.both_backends

GUILD, CHANNEL, ADMIN, LOG_CHANNEL = 1, 2, 900, 555


class WallClock:
    """The injected UTC clock: it only moves when the test moves it."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def move_to(self, moment: datetime) -> None:
        self.now = moment

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class RecordingDelivery:
    def __init__(self) -> None:
        self.failures: dict[int, BaseException] = {}
        self.delivered: list[int] = []
        self.moderation_posts: list[tuple[int, str]] = []

    async def queued(self, job: Job, position: QueuePosition) -> None:
        return None

    async def started(self, job: Job) -> None:
        return None

    async def deliver(self, job: Job, image: OpenImage) -> None:
        self.delivered.append(job.id)

    async def failed(self, job: Job, error: BaseException) -> None:
        self.failures[job.id] = error

    async def moderation(self, channel_id: int, text: str) -> None:
        self.moderation_posts.append((channel_id, text))


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def member(user_id: int, channel_id: int = CHANNEL, roles: tuple[int, ...] = ()) -> Requester:
    return Requester(str(user_id), guild_id=GUILD, channel_id=channel_id, user_id=user_id, role_ids=roles)


async def _no_sleep(_: float) -> None:
    return None


@pytest.fixture
def clock() -> WallClock:
    return WallClock(utc(2026, 11, 25, 10, 0))


@pytest.fixture
def delivery() -> RecordingDelivery:
    return RecordingDelivery()


@pytest.fixture
async def open_pipeline(
    make_settings: Callable[..., Settings], delivery: RecordingDelivery, clock: WallClock
) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Pipeline] = []

    async def build(*, start: bool = False, max_requeues: int = 5, **overrides: object) -> Pipeline:
        values: dict[str, object] = {"upstream_rpm": 6000, "upstream_concurrency": 2}
        values.update(overrides)
        settings = make_settings(**values)
        pipeline = await Pipeline.open(settings, delivery, wall_clock=clock, max_requeues=max_requeues)
        opened.append(pipeline)
        pipeline.service.runner._sleep = _no_sleep  # delivery retry backoff
        pipeline.service.runner._client._sleep = _no_sleep  # the client's retry backoff
        if start:
            await pipeline.service.start()
        return pipeline

    yield build
    for pipeline in opened:
        await pipeline.close(grace_s=1)


_PICTURES = itertools.count(1)


def request(pipeline: Pipeline, prompt: str | None = None):
    """A different picture each time by default: identical requests would share one (free) image."""
    return RequestBuilder(pipeline.settings).imagine(prompt or f"A cute orange kitten, take {next(_PICTURES)}")


async def counters(pipeline: Pipeline) -> dict[tuple[str, str, str], int]:
    rows = await pipeline.store.fetch_all("SELECT scope, subject, period, used FROM quota_counters")
    return {(r["scope"], r["subject"], r["period"]): int(r["used"]) for r in rows}


async def count(pipeline: Pipeline, table: str) -> int:
    row = await pipeline.store.fetch_one(f"SELECT COUNT(*) FROM {table}")
    assert row is not None
    return int(row[0])


async def refusal_rows(pipeline: Pipeline) -> list[tuple[int, int, str, str]]:
    await pipeline.service.background.settle(10)  # refusals are recorded after the user is answered
    rows = await pipeline.store.fetch_all("SELECT guild_id, user_id, reason, detail FROM refusals ORDER BY id")
    return [(r["guild_id"], r["user_id"], r["reason"], r["detail"]) for r in rows]


# -- limits under concurrency ----------------------------------------------------------------------


async def test_fifty_users_sending_twenty_requests_at_once_get_exactly_five_each(open_pipeline, clock) -> None:
    pipeline = await open_pipeline(
        user_daily_limit=5,
        user_pending_max=100,
        guild_queue_max=1000,
        guild_daily_budget_cny="none",
        guild_monthly_budget_cny="none",
    )
    service = pipeline.service

    async def attempt(user: int, n: int) -> int | LimitReached:
        try:
            ticket = await service.submit(request(pipeline, f"p{user}-{n}"), member(1000 + user), job_id=user * 100 + n)
        except LimitReached as refusal:
            return refusal
        return ticket.job_id

    outcomes = await asyncio.gather(*(attempt(user, n) for user in range(50) for n in range(20)))
    accepted = [o for o in outcomes if isinstance(o, int)]
    refused = [o for o in outcomes if isinstance(o, LimitReached)]
    assert (len(accepted), len(refused)) == (250, 750)

    reset = discord_time(utc(2026, 11, 26))
    assert {(r.limit, r.message, r.resets_at) for r in refused} == {
        ("user_day", f"You have used your 5 image(s) for today; your limit resets {reset}.", utc(2026, 11, 26))
    }
    used = await counters(pipeline)
    per_user = {subject: n for (scope, subject, period), n in used.items() if scope == "user_day"}
    assert per_user == {f"{GUILD}:{1000 + u}": 5 for u in range(50)}
    assert used[("user_month", f"{GUILD}:1000", "2026-11")] == 5
    assert used[("guild_day_fen", str(GUILD), "2026-11-25")] == 250 * 18
    assert await count(pipeline, "jobs") == 250
    assert {user_id for _, user_id, *_ in await refusal_rows(pipeline)} == {1000 + u for u in range(50)}
    assert await count(pipeline, "refusals") == 750


# -- the guild's budget and periods -----------------------------------------------------------------------


async def test_the_daily_budget_runs_out_and_returns_at_the_guilds_local_midnight(open_pipeline, clock) -> None:
    clock.move_to(utc(2026, 11, 25, 15, 30))  # 23:30 in Shanghai, still mid-afternoon in UTC
    pipeline = await open_pipeline(guild_daily_budget_cny="0.36", user_pending_max=10)  # two images at 0.18
    await pipeline.admin.set_limits(GUILD, ADMIN, timezone="Asia/Shanghai")
    service = pipeline.service
    await service.submit(request(pipeline), member(10), job_id=1)
    await service.submit(request(pipeline), member(11), job_id=2)

    shanghai_midnight = utc(2026, 11, 25, 16)
    with pytest.raises(LimitReached) as refused:
        await service.submit(request(pipeline), member(12), job_id=3)
    assert refused.value.limit == "guild_day_fen"
    assert refused.value.message == (
        f"This server has spent its daily image budget. It resets {discord_time(shanghai_midnight)}."
    )
    assert refused.value.resets_at == shanghai_midnight

    clock.move_to(shanghai_midnight + timedelta(seconds=1))  # the same UTC day, a new day in Shanghai
    ticket = await service.submit(request(pipeline), member(12), job_id=4)
    assert ticket.job_id == 4
    used = await counters(pipeline)
    assert used[("guild_day_fen", str(GUILD), "2026-11-25")] == 36
    assert used[("guild_day_fen", str(GUILD), "2026-11-26")] == 18


async def test_the_monthly_limit_counts_across_days_and_resets_on_the_first(open_pipeline, clock) -> None:
    clock.move_to(utc(2026, 11, 29, 12))
    pipeline = await open_pipeline(user_monthly_limit=3, user_daily_limit=20, user_pending_max=10)
    service = pipeline.service
    await service.submit(request(pipeline), member(10), job_id=1)
    await service.submit(request(pipeline), member(10), job_id=2)
    clock.move_to(utc(2026, 11, 30, 23, 50))
    await service.submit(request(pipeline), member(10), job_id=3)
    with pytest.raises(LimitReached) as refused:
        await service.submit(request(pipeline), member(10), job_id=4)
    first_of_december = utc(2026, 12, 1)
    assert refused.value.limit == "user_month"
    assert refused.value.message == (
        f"You have used your 3 image(s) this month; your limit resets {discord_time(first_of_december)}."
    )
    assert await pipeline.jobs.get(4) is None

    clock.move_to(first_of_december + timedelta(seconds=1))
    assert (await service.submit(request(pipeline), member(10), job_id=5)).job_id == 5


async def test_a_role_override_gives_its_members_more_than_the_default(open_pipeline) -> None:
    pipeline = await open_pipeline(user_daily_limit=1, user_pending_max=10)
    await pipeline.admin.set_role_limit(GUILD, ADMIN, 777, daily=3, monthly=None)
    service = pipeline.service
    for job_id in (1, 2, 3):
        await service.submit(request(pipeline), member(10, roles=(777, 1)), job_id=job_id)
    with pytest.raises(LimitReached, match="your 3 image"):
        await service.submit(request(pipeline), member(10, roles=(777, 1)), job_id=4)
    await service.submit(request(pipeline), member(11), job_id=5)
    with pytest.raises(LimitReached, match="your 1 image"):
        await service.submit(request(pipeline), member(11), job_id=6)


async def test_a_cooldown_refuses_until_it_has_passed(open_pipeline, clock) -> None:
    start = clock.now
    pipeline = await open_pipeline(cooldown_seconds=30, user_pending_max=10)
    service = pipeline.service
    await service.submit(request(pipeline), member(10), job_id=1)

    clock.advance(seconds=10)
    with pytest.raises(LimitReached) as refused:
        await service.submit(request(pipeline), member(10), job_id=2)
    ready = start + timedelta(seconds=30)
    assert refused.value.limit == "cooldown"
    assert refused.value.message == f"Slow down: one image every 30 s here. Try again {discord_time(ready)}."
    assert refused.value.resets_at == ready
    assert await pipeline.jobs.get(2) is None

    await service.submit(request(pipeline), member(11), job_id=3)  # another user is not held back
    clock.move_to(ready)
    assert (await service.submit(request(pipeline), member(10), job_id=4)).job_id == 4


async def test_a_cooldown_refusal_does_not_restart_the_cooldown(open_pipeline, clock) -> None:
    start = clock.now
    pipeline = await open_pipeline(cooldown_seconds=30, user_pending_max=10)
    await pipeline.service.submit(request(pipeline), member(10), job_id=1)
    clock.advance(seconds=29)
    with pytest.raises(LimitReached):
        await pipeline.service.submit(request(pipeline), member(10), job_id=2)
    clock.move_to(start + timedelta(seconds=30))  # 30 s after the accepted request, 1 s after the refused one
    assert (await pipeline.service.submit(request(pipeline), member(10), job_id=3)).job_id == 3


# -- refunds ---------------------------------------------------------------------------------------------------

FAILURES = [
    pytest.param([Reply.error(400, "Parameter Error: size is invalid")], "BadRequest", 0, id="400"),
    pytest.param([Reply.content_rejected()], "ContentRejected", 0, id="content-rejected"),
    pytest.param([Reply.error(401)], "AuthenticationFailed", 0, id="401"),
    pytest.param([Reply.error(403)], "PermissionDenied", 0, id="403"),
    pytest.param([Reply.error(429, retry_after=0)] * 3, "RateLimited", 0, id="429-persisting"),
    pytest.param([Reply.error(500)] * 3, "ServerError", 0, id="500"),
    pytest.param([Reply.drop()], "ServerError", 0, id="dropped-connection"),
    pytest.param([Reply.non_json()], "MalformedResponse", 0, id="non-json"),
    pytest.param([Reply.no_image()], "MalformedResponse", 0, id="no-image-in-answer"),
    pytest.param([Reply.ok(image="missing")], "ImageUnavailable", 18, id="image-missing"),
]


@pytest.mark.parametrize(("replies", "code", "upstream_fen"), FAILURES)
async def test_every_failure_is_refunded_so_the_user_can_generate_again(
    open_pipeline, fake_api: FakeImageApi, replies: list[Reply], code: str, upstream_fen: int
) -> None:
    pipeline = await open_pipeline(start=True, max_requeues=0, user_daily_limit=1)
    service = pipeline.service
    fake_api.script(*replies)
    await service.submit(request(pipeline), member(10), job_id=1)
    failed = await asyncio.wait_for(service.wait(1), 10)
    assert (failed.state, failed.error_code, failed.cost_fen, failed.upstream_fen) == ("failed", code, 0, upstream_fen)
    assert await counters(pipeline) == {  # reserved at submit, all given back on failure
        ("user_day", f"{GUILD}:10", "2026-11-25"): 0,
        ("user_month", f"{GUILD}:10", "2026-11"): 0,
        ("guild_day_fen", str(GUILD), "2026-11-25"): 0,
        ("guild_month_fen", str(GUILD), "2026-11"): 0,
    }
    assert fake_api.pending_replies == 0  # every scripted failure was really played

    await service.submit(request(pipeline), member(10), job_id=2)  # the limit of 1 is free again
    delivered = await asyncio.wait_for(service.wait(2), 10)
    assert (delivered.state, delivered.cost_fen) == ("delivered", 18)
    used = await counters(pipeline)
    assert used[("user_day", f"{GUILD}:10", "2026-11-25")] == 1
    assert used[("guild_day_fen", str(GUILD), "2026-11-25")] == 18


async def test_a_failure_refunds_the_period_it_was_reserved_in(open_pipeline, fake_api, clock) -> None:
    clock.move_to(utc(2026, 11, 25, 23, 59))
    pipeline = await open_pipeline(user_daily_limit=1, upstream_concurrency=1)  # job 1 meets the 400
    service = pipeline.service
    await service.submit(request(pipeline), member(10), job_id=1)
    clock.move_to(utc(2026, 11, 26, 0, 1))  # the job fails after midnight
    await service.submit(request(pipeline, "another picture"), member(10), job_id=2)
    fake_api.script(Reply.error(400))
    await service.start(resume=False)  # both jobs are already in the scheduler's queue
    assert (await asyncio.wait_for(service.wait(1), 10)).state == "failed"
    await asyncio.wait_for(service.wait(2), 10)
    used = await counters(pipeline)
    assert used[("user_day", f"{GUILD}:10", "2026-11-25")] == 0
    assert used[("user_day", f"{GUILD}:10", "2026-11-26")] == 1


# -- nothing charged for a refusal -----------------------------------------------------------------------------


async def test_a_request_refused_by_the_user_limit_leaves_no_job_and_no_charge(open_pipeline) -> None:
    pipeline = await open_pipeline(user_daily_limit=1, user_pending_max=10)
    await pipeline.service.submit(request(pipeline), member(10), job_id=1)
    before = await counters(pipeline)
    with pytest.raises(LimitReached):
        await pipeline.service.submit(request(pipeline), member(10), job_id=2)
    assert await pipeline.jobs.get(2) is None
    assert await counters(pipeline) == before
    assert before[("guild_day_fen", str(GUILD), "2026-11-25")] == 18


async def test_a_request_refused_by_the_guild_budget_charges_the_user_nothing(open_pipeline) -> None:
    # the user's counters come first in the reservation: the budget's refusal must roll them back
    pipeline = await open_pipeline(guild_daily_budget_cny="0.18")
    await pipeline.service.submit(request(pipeline), member(10), job_id=1)
    before = await counters(pipeline)
    with pytest.raises(LimitReached, match="daily image budget"):
        await pipeline.service.submit(request(pipeline), member(11), job_id=2)
    assert await counters(pipeline) == before
    assert not any(subject == f"{GUILD}:11" for _, subject, _ in before)
    assert await pipeline.jobs.get(2) is None


async def test_a_request_refused_by_the_queue_charges_nothing(open_pipeline) -> None:
    pipeline = await open_pipeline(user_pending_max=1)
    await pipeline.service.submit(request(pipeline), member(10), job_id=1)
    before = await counters(pipeline)
    with pytest.raises(LimitReached) as refused:  # (an identical request would share job 1's flight)
        await pipeline.service.submit(request(pipeline, "another picture"), member(10), job_id=2)
    assert refused.value.limit == "user_pending"
    assert await counters(pipeline) == before
    assert await pipeline.jobs.get(2) is None


# -- moderation ------------------------------------------------------------------------------------------------


async def test_a_blocked_user_is_told_the_reason_and_expiry_until_it_passes(open_pipeline, clock) -> None:
    pipeline = await open_pipeline()
    await pipeline.admin.block(GUILD, ADMIN, 10, "spamming the channel", timedelta(hours=2))
    expires = clock.now + timedelta(hours=2)
    with pytest.raises(Refused) as refused:
        await pipeline.service.submit(request(pipeline), member(10), job_id=1)
    assert refused.value.limit == "blocked"
    assert refused.value.message == (
        f"You are blocked from generating images here until {discord_time(expires, 'f')}: spamming the channel"
    )
    assert await pipeline.jobs.get(1) is None
    assert await counters(pipeline) == {}
    assert [r[:3] for r in await refusal_rows(pipeline)] == [(GUILD, 10, "blocked")]
    await pipeline.service.submit(request(pipeline), member(11), job_id=2)  # only that user

    clock.move_to(expires + timedelta(seconds=1))
    assert (await pipeline.service.submit(request(pipeline), member(10), job_id=3)).job_id == 3


async def test_a_block_without_expiry_says_no_date(open_pipeline) -> None:
    pipeline = await open_pipeline()
    await pipeline.admin.block(GUILD, ADMIN, 10, "abuse")
    with pytest.raises(Refused) as refused:
        await pipeline.service.submit(request(pipeline), member(10), job_id=1)
    assert refused.value.message == "You are blocked from generating images here: abuse"


async def test_a_disallowed_channel_is_refused_naming_the_allowed_ones(open_pipeline) -> None:
    pipeline = await open_pipeline(user_pending_max=10)
    await pipeline.admin.allow_channel(GUILD, ADMIN, 77, True)
    await pipeline.admin.allow_channel(GUILD, ADMIN, 78, True)
    with pytest.raises(Refused) as refused:
        await pipeline.service.submit(request(pipeline), member(10, channel_id=CHANNEL), job_id=1)
    assert refused.value.limit == "channel"
    assert refused.value.message == "Images can only be made in <#77>, <#78> in this server."
    assert await pipeline.jobs.get(1) is None
    assert await counters(pipeline) == {}
    assert (await pipeline.service.submit(request(pipeline), member(10, channel_id=77), job_id=2)).job_id == 2


async def test_a_rule_refusal_is_recorded_and_posted_to_the_moderation_log(open_pipeline, delivery) -> None:
    pipeline = await open_pipeline()
    rule, _ = await pipeline.admin.add_rule(GUILD, ADMIN, "word", "bad", "no bad words")
    await pipeline.admin.set_log_channel(GUILD, ADMIN, LOG_CHANNEL)
    with pytest.raises(RuleRefusal) as refused:
        await pipeline.service.submit(request(pipeline, "a really b.a.d cat"), member(10), job_id=1)
    assert refused.value.limit == "rule"
    assert refused.value.message == "This server does not allow that request: no bad words."
    assert await pipeline.jobs.get(1) is None
    assert await counters(pipeline) == {}
    assert await refusal_rows(pipeline) == [(GUILD, 10, "rule", refused.value.message)]
    assert delivery.moderation_posts == [
        (
            LOG_CHANNEL,
            f"🚫 Refused <@10> in <#{CHANNEL}> by rule #{rule.id} (word `bad`, in the prompt): > a really b.a.d cat",
        )
    ]


async def test_a_rule_refusal_names_the_field_that_broke_it(open_pipeline, delivery) -> None:
    pipeline = await open_pipeline()
    await pipeline.admin.add_rule(GUILD, ADMIN, "regex", r"\bgore\b", "no gore")
    await pipeline.admin.set_log_channel(GUILD, ADMIN, LOG_CHANNEL)
    req = RequestBuilder(pipeline.settings).imagine("a calm lake", negative_prompt="Ｇｏｒｅ")
    with pytest.raises(RuleRefusal) as refused:
        await pipeline.service.submit(req, member(10), job_id=1)
    assert refused.value.match.field == "negative_prompt"
    await pipeline.service.background.settle(10)  # posted after the user is answered
    assert "in the negative prompt" in delivery.moderation_posts[0][1]


async def test_a_rule_refusal_without_a_log_channel_is_recorded_but_not_posted(open_pipeline, delivery) -> None:
    pipeline = await open_pipeline()
    await pipeline.admin.add_rule(GUILD, ADMIN, "word", "坏人", "no villains")
    with pytest.raises(RuleRefusal):
        await pipeline.service.submit(request(pipeline, "画一个坏人"), member(10), job_id=1)
    assert [r[2] for r in await refusal_rows(pipeline)] == ["rule"]
    assert delivery.moderation_posts == []


async def test_limit_refusals_are_recorded_but_not_posted_to_the_log(open_pipeline, delivery) -> None:
    pipeline = await open_pipeline(user_daily_limit=0)
    await pipeline.admin.set_log_channel(GUILD, ADMIN, LOG_CHANNEL)
    with pytest.raises(LimitReached):
        await pipeline.service.submit(request(pipeline), member(10), job_id=1)
    assert [r[2] for r in await refusal_rows(pipeline)] == ["user_day"]
    assert delivery.moderation_posts == []


async def test_a_provider_safety_refusal_is_posted_to_the_moderation_log(open_pipeline, delivery, fake_api) -> None:
    pipeline = await open_pipeline(start=True)
    await pipeline.admin.set_log_channel(GUILD, ADMIN, LOG_CHANNEL)
    fake_api.script(Reply.content_rejected())
    await pipeline.service.submit(request(pipeline, "something the provider refuses"), member(10), job_id=1)
    job = await asyncio.wait_for(pipeline.service.wait(1), 10)
    assert job.error_code == "ContentRejected"
    assert isinstance(delivery.failures[1], ContentRejected)
    request_id = fake_api.requests[0].request_id
    assert delivery.moderation_posts == [
        (
            LOG_CHANNEL,
            f"⚠️ The provider refused a prompt of <@10> (content safety, request `{request_id}`): "
            "> something the provider refuses",
        )
    ]


async def test_other_failures_are_not_posted_to_the_moderation_log(open_pipeline, delivery, fake_api) -> None:
    pipeline = await open_pipeline(start=True)
    await pipeline.admin.set_log_channel(GUILD, ADMIN, LOG_CHANNEL)
    fake_api.script(Reply.error(400))
    await pipeline.service.submit(request(pipeline), member(10), job_id=1)
    assert (await asyncio.wait_for(pipeline.service.wait(1), 10)).error_code == "BadRequest"
    assert delivery.moderation_posts == []


# -- the per-guild cache and changes made while it reloads --------------------------------------------------


class PausingGuildStore(GuildStore):
    """Real reads; the next read of `pause_on` ("rules" or "overrides") waits on `release` after reading."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.pause_on: str | None = None
        self.read_done = asyncio.Event()
        self.release = asyncio.Event()

    async def _pause(self, method: str) -> None:
        if self.pause_on == method:
            self.pause_on = None  # only that one read waits
            self.read_done.set()
            await self.release.wait()

    async def rules(self, guild_id: int) -> list[Rule]:
        found = await super().rules(guild_id)
        await self._pause("rules")
        return found

    async def overrides(self, guild_id: int) -> dict[str, Any]:
        found = await super().overrides(guild_id)
        await self._pause("overrides")
        return found


@pytest.fixture
async def paused_gate(make_settings: Callable[..., Settings], clock: WallClock):
    settings = make_settings()
    store = await open_store(settings.database_url, clock=clock)
    guilds = PausingGuildStore(store)
    gate = Gatekeeper(settings, guilds, utcnow=clock)
    try:
        yield gate, guilds, GuildAdmin(store, gate)
    finally:
        await store.close()


async def test_a_rule_added_while_the_rules_reload_is_in_flight_is_enforced(paused_gate) -> None:
    gate, guilds, admin = paused_gate
    await admin.add_rule(GUILD, ADMIN, "word", "first", "no first")
    guilds.pause_on = "rules"
    in_flight = asyncio.create_task(gate.screen(GUILD, 10, CHANNEL, {"prompt": "a calm lake"}))
    await guilds.read_done.wait()  # the load has read [first] and has not stored it yet
    await admin.add_rule(GUILD, ADMIN, "word", "second", "no second")  # drops the (empty) cache entry
    guilds.release.set()
    await in_flight

    with pytest.raises(RuleRefusal) as refused:
        await gate.screen(GUILD, 10, CHANNEL, {"prompt": "the second picture"})
    assert refused.value.match.rule.pattern == "second"
    assert len(await gate.rules(GUILD)) == 2


async def test_a_channel_allowed_while_the_policy_reload_is_in_flight_is_seen(paused_gate) -> None:
    gate, guilds, admin = paused_gate
    await admin.allow_channel(GUILD, ADMIN, 77, True)
    guilds.pause_on = "overrides"
    in_flight = asyncio.create_task(gate.policy(GUILD))
    await guilds.read_done.wait()
    await admin.allow_channel(GUILD, ADMIN, 78, True)
    guilds.release.set()
    assert (await in_flight).allowed_channels == frozenset({77, 78})  # the load that raced reloads
    assert (await gate.policy(GUILD)).allowed_channels == frozenset({77, 78})
    await gate.screen(GUILD, 10, 78, {"prompt": "a calm lake"})
