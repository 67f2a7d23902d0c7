"""Fairness, the shared upstream limits and queue admission, end to end.

The real ImagineBot (via the harness) against the fake Discord and the fake image API. The order
in which jobs reach the upstream is read from ``fake_api.requests`` (each request's prompt and
``received_at``, ``time.monotonic()`` of this process); what users see is read from the fake
Discord's messages. Slow jobs are scripted per request (``Reply.ok(delay=...)``) so that the
queue is in a known state when the next interaction arrives; each step waits for a payload the
bot actually sent (a reply edit, an upstream request) before the next one, never for a duration.
"""

from __future__ import annotations

import re

import pytest

from tests.discord.conftest import BotHarness, private_answer, private_refusal
from tests.fakes.fake_discord import FakeMessage, SentInteraction
from tests.fakes.image_api import Reply

FIRST_USER = 10**17  # any snowflake-shaped int; each test picks distinct users from here


def user(n: int) -> int:
    return FIRST_USER + n


def imagine(harness: BotHarness, prompt: str, *, user_id: int, guild_id: int | None = None) -> SentInteraction:
    return harness.slash("imagine", {"prompt": prompt}, user_id=user_id, guild_id=guild_id)


def upstream_prompts(harness: BotHarness) -> list[str]:
    return [r.json["prompt"] for r in harness.api.requests]


async def upstream_requests(harness: BotHarness, n: int, timeout: float = 15) -> None:
    """Wait until the fake image API has received at least ``n`` generation requests."""
    await harness.discord.wait_for(lambda _: len(harness.api.requests) >= n, timeout=timeout)


async def upstream_answered(harness: BotHarness, n: int, timeout: float = 15) -> None:
    """Wait until the fake image API has received and answered ``n`` generation requests."""

    def answered(_: object) -> bool:
        requests = harness.api.requests
        return len(requests) >= n and all(r.status is not None for r in requests)

    await harness.discord.wait_for(answered, timeout=timeout)


async def queued(harness: BotHarness, sent: SentInteraction) -> FakeMessage:
    """Wait until the job was admitted and its reply shows its place in the queue."""
    return await harness.reply(sent, lambda m: "Queued" in m.content)


def reply_steps(message: FakeMessage) -> list[str]:
    """What the reply showed, edit by edit: the status text, or "<image>" for the result."""
    steps = []
    for entry in message.history:
        if entry["op"] != "edit":
            continue
        steps.append("<image>" if entry["files"] else str(entry["payload"].get("content") or ""))
    return steps


def queue_places(steps: list[str]) -> list[int]:
    return [int(m.group(1)) for s in steps if (m := re.search(r"Queued:\*\* #(\d+) in this server", s))]


async def refusal(harness: BotHarness, sent: SentInteraction) -> str:
    """The refusal sentence: the private, one and only response; nothing public, nothing written."""
    text = await private_refusal(harness, sent)
    assert all(m.ephemeral for m in harness.discord.messages.values() if m.interaction_id == sent.id)
    return text


# -- 1. fairness ---------------------------------------------------------------------------------


async def test_a_flooding_guild_does_not_starve_another_guild(harness: BotHarness) -> None:
    other_guild = harness.discord.add_guild()  # before start: announced in READY
    harness.api.latency_s = 0.1
    # The first generation is slow, so the whole flood is queued before guild B asks.
    harness.api.script(Reply.ok(delay=3.0))  # the slow head: the rest queue up behind it even on a loaded machine
    await harness.start(upstream_concurrency=1, user_pending_max=2)

    flood = [imagine(harness, "flood 0", user_id=user(0))]
    await upstream_requests(harness, 1)
    flood += [imagine(harness, f"flood {i}", user_id=user(i)) for i in range(1, 8)]
    for sent in flood[1:]:
        await queued(harness, sent)
    assert len(harness.api.requests) == 1  # the flood is waiting behind the first job
    imagine(harness, "the other server", user_id=user(8), guild_id=other_guild.id)

    await upstream_requests(harness, 9)
    prompts = upstream_prompts(harness)
    assert sorted(prompts) == sorted([f"flood {i}" for i in range(8)] + ["the other server"])
    assert prompts.index("the other server") in (1, 2), prompts  # 2nd or 3rd of 9, not last


async def test_a_flooding_user_does_not_starve_another_user_of_the_same_guild(harness: BotHarness) -> None:
    harness.api.latency_s = 0.1
    harness.api.script(Reply.ok(delay=3.0))
    await harness.start(upstream_concurrency=1, user_pending_max=8)

    flood = [imagine(harness, "mine 0", user_id=user(0))]
    await upstream_requests(harness, 1)
    flood += [imagine(harness, f"mine {i}", user_id=user(0)) for i in range(1, 7)]
    for sent in flood[1:]:
        await queued(harness, sent)
    assert len(harness.api.requests) == 1
    imagine(harness, "someone else", user_id=user(1))

    await upstream_requests(harness, 8)
    prompts = upstream_prompts(harness)
    assert sorted(prompts) == sorted([f"mine {i}" for i in range(7)] + ["someone else"])
    assert prompts.index("someone else") in (1, 2), prompts  # 2nd or 3rd of 8, not last


# -- 2. the shared upstream limits -----------------------------------------------------------------


@pytest.mark.exact_limits
async def test_the_limiter_never_earns_a_429_from_an_upstream_enforcing_the_same_limits(
    harness: BotHarness,
) -> None:
    other_guild = harness.discord.add_guild()
    api = harness.api
    api.rpm_limit, api.concurrency_limit = 120, 2  # 120/min is also at most 2 starts in any second
    api.latency_s = 0.05
    # The first two generations outlast a second: the concurrency limit binds while they run,
    # then the quick ones make the per-second limit bind.
    api.script(Reply.ok(delay=1.3), Reply.ok(delay=1.3))
    await harness.start(upstream_rpm=120, upstream_concurrency=2, upstream_max_retries=2)

    for i in range(8):
        imagine(harness, f"job {i}", user_id=user(i), guild_id=other_guild.id if i % 2 else None)

    await upstream_answered(harness, 8)
    assert api.rate_limited_count == 0
    assert api.max_in_flight <= 2
    assert sorted(upstream_prompts(harness)) == [f"job {i}" for i in range(8)]  # each once: no retry
    assert api.generation_count == 8


# -- 3. a 429 pauses everyone --------------------------------------------------------------------


async def test_a_429_pauses_every_start_until_its_retry_after(harness: BotHarness) -> None:
    other_guild = harness.discord.add_guild()
    harness.api.script(Reply.error(429, retry_after=1))
    await harness.start(upstream_concurrency=2, upstream_max_retries=0)

    first = imagine(harness, "refused once", user_id=user(0))
    await harness.discord.wait_for(lambda _: harness.api.requests and harness.api.requests[0].status == 429)
    await harness.job(first.id, states=("queued",))  # the bot has seen the 429 and requeued the job
    # Free concurrency slots: without the pause these would start at once.
    imagine(harness, "same server", user_id=user(1))
    imagine(harness, "other server", user_id=user(2), guild_id=other_guild.id)
    await upstream_answered(harness, 4)

    refused, *later = harness.api.requests
    assert refused.status == 429 and len(later) == 3
    assert sorted(upstream_prompts(harness)[1:]) == ["other server", "refused once", "same server"]
    gaps = [round(r.received_at - refused.received_at, 3) for r in later]
    assert min(gaps) >= 0.9, gaps


async def test_a_429_job_goes_back_to_the_head_and_is_charged_once(harness: BotHarness) -> None:
    harness.api.script(Reply.error(429, retry_after=1, delay=0.3))
    await harness.start(upstream_concurrency=1, upstream_max_retries=0)

    first = imagine(harness, "refused once", user_id=user(0))
    await upstream_requests(harness, 1)
    other = imagine(harness, "someone else", user_id=user(1))
    await queued(harness, other)  # waiting behind the job that is about to be refused

    final = await harness.result(first)
    await harness.result(other)
    # retried before the job that was waiting, although that one's user had not had a turn yet
    assert upstream_prompts(harness) == ["refused once", "refused once", "someone else"]
    job = await harness.job(first.id)
    assert (job.state, job.cost_fen, job.upstream_fen, job.attempts) == ("delivered", 18, 18, 1)
    assert harness.api.generation_count == 2  # one per delivered job: the 429 cost nothing
    steps = reply_steps(final)
    assert steps[-1] == "<image>"
    # while paused it is just queued again: no failure sentence ever replaced the status
    assert not any("❌" in s or "try again" in s.lower() for s in steps), steps


# -- 4. admission refusals -----------------------------------------------------------------------


async def test_a_user_over_their_pending_limit_is_refused_privately(harness: BotHarness) -> None:
    harness.api.script(Reply.ok(delay=1.0))
    await harness.start(user_pending_max=1)

    first = imagine(harness, "the first", user_id=user(0))
    await upstream_requests(harness, 1)
    second = imagine(harness, "one too many", user_id=user(0))

    text = await refusal(harness, second)
    assert harness.api.requests[0].status is None  # refused while the first was still generating
    assert text == ("You already have 1 image(s) queued or generating. Wait for one to finish, then try again.")
    await harness.result(first)
    assert upstream_prompts(harness) == ["the first"]


async def test_a_full_server_queue_refuses_while_another_server_is_accepted(harness: BotHarness) -> None:
    other_guild = harness.discord.add_guild()
    harness.api.script(Reply.ok(delay=1.0))
    await harness.start(upstream_concurrency=1, guild_queue_max=2)

    imagine(harness, "running", user_id=user(0))
    await upstream_requests(harness, 1)
    waiting = [imagine(harness, f"waiting {i}", user_id=user(i)) for i in (1, 2)]
    for sent in waiting:
        await queued(harness, sent)
    refused = imagine(harness, "one too many", user_id=user(3))
    text = await refusal(harness, refused)
    elsewhere = imagine(harness, "another server", user_id=user(4), guild_id=other_guild.id)
    await queued(harness, elsewhere)

    assert harness.api.requests[0].status is None  # all of this while the first was generating
    assert re.fullmatch(r"This server's queue is full \(2 waiting\)\. Try again in about \d+ s\.", text), text
    await upstream_answered(harness, 4)
    assert sorted(upstream_prompts(harness)) == ["another server", "running", "waiting 1", "waiting 2"]


async def test_a_request_that_cannot_finish_within_the_reply_window_is_refused(harness: BotHarness) -> None:
    # One start a minute: the scheduler expects each queued job to cost about 60 s.
    await harness.start(upstream_rpm=1, upstream_concurrency=1, guild_queue_max=50)

    def outcome(sent: SentInteraction) -> str | None:
        if private_answer(harness.discord, sent, strict=False) is not None:
            return "refused"
        reply = harness.discord.original_message(sent.id)
        shown = reply is not None and ("Queued" in reply.content or "Generating" in reply.content)
        return "accepted" if shown or (reply is not None and reply.attachments) else None

    outcomes: list[str] = []
    sent_all: list[SentInteraction] = []
    for i in range(18):  # one at a time, each admitted or refused before the next
        sent = imagine(harness, f"patient {i}", user_id=user(i))
        sent_all.append(sent)
        outcomes.append(await harness.discord.wait_for(lambda _, s=sent: outcome(s)))

    accepted = outcomes.count("accepted")
    assert outcomes == ["accepted"] * accepted + ["refused"] * (18 - accepted), outcomes
    assert 12 <= accepted <= 16, outcomes  # about 15 minutes of queue at one start a minute
    text = await refusal(harness, sent_all[accepted])
    assert text.startswith(
        "The queue is too long to finish your image before Discord's 15-minute reply window closes."
    ), text
    assert upstream_prompts(harness) == ["patient 0"]  # only the first could start this minute


# -- 5. queue positions --------------------------------------------------------------------------


async def test_queue_positions_are_updated_as_the_queue_moves(harness: BotHarness) -> None:
    other_guild = harness.discord.add_guild()
    harness.api.latency_s = 1.2  # longer than the bot's minimum interval between status edits
    await harness.start(upstream_concurrency=1)

    imagine(harness, "first", user_id=user(0))
    await upstream_requests(harness, 1)
    elsewhere = imagine(harness, "other server", user_id=user(1), guild_id=other_guild.id)
    await queued(harness, elsewhere)
    second = imagine(harness, "second", user_id=user(2))
    await queued(harness, second)
    third = imagine(harness, "third", user_id=user(3))

    final = await harness.result(third, timeout=20)
    assert upstream_prompts(harness) == ["first", "other server", "second", "third"]
    steps = reply_steps(final)
    # Its place in *this server* (the other server's job ahead of it is not counted): #2 while
    # "first" runs, still #2 while the other server's job runs, #1 while "second" runs.
    assert queue_places(steps) == [2, 2, 1], steps
    assert [s.split("**")[1] if "**" in s else s for s in steps[3:]] == ["Generating…", "<image>"], steps
    assert final.edits == len(steps) <= 6  # one edit per change, no storm


# -- nothing lost while the queue moves ----------------------------------------------------------


async def test_every_job_of_a_busy_queue_is_delivered(harness: BotHarness) -> None:
    harness.api.latency_s = 0.02  # quick jobs, but slower than they arrive: the queue stays long
    await harness.start(upstream_concurrency=1, user_pending_max=4, guild_queue_max=40)
    sent = [imagine(harness, f"busy {i}", user_id=user(i % 10)) for i in range(40)]
    await upstream_requests(harness, 40)
    jobs = [await harness.job(s.id) for s in sent]
    lost = [(job.prompt, job.error_code, job.error_message) for job in jobs if job.state != "delivered"]
    assert lost == []
    assert harness.api.generation_count == 40
