"""Generation jobs: the durable record of every request, its state and its cost.

States: queued -> submitting -> generated -> delivered, or failed from any of them.
`generated` is written (image URL and request id) before anything else is done with the
image, so a restart only downloads and delivers again, never generates again (only a job caught
mid-request by a crash is resubmitted, once).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiosqlite

from bot.storage.db import Store
from bot.storage.quotas import (
    Charge,
    apply_charges,
    charges_from_json,
    charges_to_json,
    refund_charges,
    take_cooldown,
)

UNFINISHED = ("queued", "submitting", "generated")
#: the ledger's error_code of a job its requester (or a moderator) cancelled while it waited
CANCELLED = "Cancelled"
_DISCORD_EPOCH_MS = 1420070400000
# low bits: a per-process counter from a random start, unique within the process and unlikely
# to meet another process's ids in the same millisecond
_SEQUENCE = itertools.count(int.from_bytes(os.urandom(3), "big"))


def new_local_id() -> int:
    """A snowflake-shaped id for jobs that have no Discord interaction (the CLI)."""
    millis = int(time.time() * 1000) - _DISCORD_EPOCH_MS
    return (millis << 22) | (next(_SEQUENCE) & 0x3FFFFF)


@dataclass(frozen=True, slots=True)
class Cooldown:
    subject: str
    now_ms: int
    cooldown_ms: int


class CooldownActive(Exception):
    def __init__(self, last_ms: int, cooldown_ms: int) -> None:
        super().__init__(f"cooldown: last request at {last_ms}")
        self.last_ms = last_ms
        self.cooldown_ms = cooldown_ms


@dataclass(frozen=True, slots=True)
class NewJob:
    id: int
    requester: str
    command: str
    model: str
    prompt: str
    size: str
    negative_prompt: str
    prompt_extend: bool
    watermark: bool
    style: str | None = None
    guild_id: int | None = None
    channel_id: int | None = None
    user_id: int | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    interaction_token: str | None = field(default=None, repr=False)
    token_expires_at: str | None = None
    message_id: int | None = None
    reroll_of: int | None = None
    locale: str | None = None  # Discord's code of the requester's language, for the reply
    guild_locale: str | None = None  # the server's, for posts in its channels
    private: bool = False  # an ephemeral result only the requester sees; never posted in the channel
    spoiler: bool = False  # the image is posted as a spoiler
    sources: dict[str, str] = field(default_factory=dict)  # where each resolved value came from (Details)


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    guild_id: int | None
    channel_id: int | None
    user_id: int | None
    requester: str
    command: str
    style: str | None
    model: str
    prompt: str
    negative_prompt: str
    size: str
    prompt_extend: bool
    watermark: bool
    inputs: dict[str, Any]
    state: str
    attempts: int
    request_id: str | None
    image_url: str | None
    image_sha256: str | None
    revised_prompt: str | None
    error_code: str | None
    error_message: str | None
    upstream_fen: int
    cost_fen: int
    queued_at: str
    started_at: str | None
    generated_at: str | None
    finished_at: str | None
    interaction_token: str | None = field(repr=False)  # a credential: never in a repr or a log
    token_expires_at: str | None
    message_id: int | None
    reroll_of: int | None
    cache_hit: bool  # answered from the result cache: no upstream call, no cost
    locale: str | None = None  # Discord's code of the requester's language ("zh-CN"); None: unknown
    guild_locale: str | None = None  # the server's preferred language, for channel posts
    private: bool = False  # an ephemeral result: never posted in the channel
    spoiler: bool = False
    result_message_id: int | None = None  # the message carrying the image (the reply or a channel post)
    sources: dict[str, str] = field(default_factory=dict)  # "style" -> "option" | "yours" | "style" | "server"

    @property
    def finished(self) -> bool:
        return self.state not in UNFINISHED

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Job:
        values = dict(zip(row.keys(), tuple(row), strict=True))
        values["prompt_extend"] = bool(values["prompt_extend"])
        values["watermark"] = bool(values["watermark"])
        values["cache_hit"] = bool(values["cache_hit"])
        values["inputs"] = json.loads(values.pop("inputs_json") or "{}")
        values["private"] = bool(values.pop("is_private", 0))
        values["spoiler"] = bool(values.get("spoiler", 0))
        values["sources"] = json.loads(values.pop("sources_json", None) or "{}")
        return cls(**{name: values[name] for name in cls.__slots__})  # type: ignore[attr-defined]


class JobStore:
    """Every state change is one conditional UPDATE: a job cannot go backwards by accident."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def insert(
        self, job: NewJob, *, charges: list[Charge] | None = None, cooldown: Cooldown | None = None
    ) -> bool:
        """Write the job and reserve its quota in ONE transaction; False for a replayed id.

        Raises QuotaExceeded or CooldownActive (and writes nothing) when a limit refuses.
        """
        charges = charges or []
        async with self._store.transaction() as db:
            # The row first: a concurrent replay (another process, on PostgreSQL) meets the key here;
            # a refused limit below rolls the row back with everything else.
            cursor = await db.execute(
                """
                INSERT INTO jobs (id, guild_id, channel_id, user_id, requester, command, style, model, prompt,
                                  negative_prompt, size, prompt_extend, watermark, inputs_json, queued_at,
                                  interaction_token, token_expires_at, message_id, reroll_of, quota_json,
                                  locale, guild_locale, is_private, spoiler, sources_json)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (id) DO NOTHING
                RETURNING id
                """,
                (
                    job.id,
                    job.guild_id,
                    job.channel_id,
                    job.user_id,
                    job.requester,
                    job.command,
                    job.style,
                    job.model,
                    job.prompt,
                    job.negative_prompt,
                    job.size,
                    int(job.prompt_extend),
                    int(job.watermark),
                    json.dumps(job.inputs, ensure_ascii=False, sort_keys=True),
                    self._store.now(),
                    job.interaction_token,
                    job.token_expires_at,
                    job.message_id,
                    job.reroll_of,
                    charges_to_json(charges),
                    job.locale,
                    job.guild_locale,
                    int(job.private),
                    int(job.spoiler),
                    json.dumps(job.sources, sort_keys=True),
                ),
            )
            if await cursor.fetchone() is None:
                return False  # a replayed interaction: the job exists
            if cooldown is not None:
                blocking = await take_cooldown(db, cooldown.subject, cooldown.now_ms, cooldown.cooldown_ms)
                if blocking is not None:
                    raise CooldownActive(blocking, cooldown.cooldown_ms)
            await apply_charges(db, charges)
        return True

    async def recent_negative_prompts(
        self, requester: str, *, exclude: Sequence[str] = (), max_chars: int = 100, limit: int = 25
    ) -> list[str]:
        """A requester's own negative prompts of at most `max_chars` characters, most recently used
        first, each once (for autocomplete); `exclude`: values not to repeat (the styles' defaults,
        which the user did not write). Ids break ties between jobs queued in the same millisecond."""
        others = "".join(" AND negative_prompt <> ?" for _ in exclude)
        rows = await self._store.fetch_all(
            f"""
            SELECT negative_prompt FROM jobs
            WHERE requester = ? AND negative_prompt <> '' AND LENGTH(negative_prompt) <= ?{others}
            GROUP BY negative_prompt ORDER BY MAX(queued_at) DESC, MAX(id) DESC LIMIT ?
            """,
            (requester, max_chars, *exclude, limit),
        )
        return [row[0] for row in rows]

    async def history(self, guild_id: int, user_id: int, *, limit: int, offset: int = 0) -> list[Job]:
        """A user's delivered images in one server, newest first (for /history); ids break ties."""
        rows = await self._store.fetch_all(
            "SELECT * FROM jobs WHERE guild_id = ? AND user_id = ? AND state = 'delivered'"
            " ORDER BY finished_at DESC, id DESC LIMIT ? OFFSET ?",
            (guild_id, user_id, limit, offset),
        )
        return [Job.from_row(row) for row in rows]

    async def history_count(self, guild_id: int, user_id: int) -> int:
        row = await self._store.fetch_one(
            "SELECT COUNT(*) AS n FROM jobs WHERE guild_id = ? AND user_id = ? AND state = 'delivered'",
            (guild_id, user_id),
        )
        return int(row["n"]) if row else 0

    def now(self) -> datetime:
        """The store's clock (UTC), the one every timestamp of a job is written with."""
        return self._store.clock()

    async def get(self, job_id: int) -> Job | None:
        row = await self._store.fetch_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(row) if row else None

    async def unfinished(self) -> list[Job]:
        """Jobs to resume after a restart, oldest first (the order they were queued in)."""
        rows = await self._store.fetch_all(
            "SELECT * FROM jobs WHERE state IN ('queued', 'submitting', 'generated') ORDER BY queued_at, id"
        )
        return [Job.from_row(row) for row in rows]

    async def waiting(self) -> tuple[int, str | None]:
        """Bot jobs admitted and not started yet (waiting for an upstream slot, or for an identical
        request in flight): how many, and when the oldest was admitted. On PostgreSQL, every process's."""
        row = await self._store.fetch_one(
            "SELECT COUNT(*) AS waiting, MIN(queued_at) AS oldest FROM jobs"
            " WHERE state = 'queued' AND guild_id IS NOT NULL"
        )
        return (int(row["waiting"]), row["oldest"]) if row else (0, None)

    async def add_charges(self, job_id: int, charges: list[Charge]) -> None:
        """Reserve more for a job (all or nothing; QuotaExceeded changes nothing)."""
        async with self._store.transaction() as db:
            cursor = await db.execute("SELECT quota_json FROM jobs WHERE id = ?", (job_id,))
            row = await cursor.fetchone()
            held = charges_from_json(row[0] if row else None)
            missing = [
                c
                for c in charges
                if (c.scope, c.subject, c.period) not in {(h.scope, h.subject, h.period) for h in held}
            ]
            await apply_charges(db, missing)
            await db.execute("UPDATE jobs SET quota_json = ? WHERE id = ?", (charges_to_json(held + missing), job_id))

    async def set_message_id(self, job_id: int, message_id: int) -> bool:
        """The reply message the job's progress and result edit in place (known once acknowledged)."""
        return await self._update(
            job_id, "message_id = :message_id", "state IN ('queued', 'submitting')", message_id=message_id
        )

    async def mark_submitting(self, job_id: int) -> bool:
        return await self._update(
            job_id,
            "state = 'submitting', attempts = attempts + 1, started_at = COALESCE(started_at, :now)",
            "state IN ('queued', 'submitting')",
        )

    async def mark_queued_again(self, job_id: int) -> bool:
        """Back to the queue (the upstream said 429): the attempt is not counted against anyone."""
        return await self._update(
            job_id,
            "state = 'queued', attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END",
            "state = 'submitting'",
        )

    async def mark_generated(
        self,
        job_id: int,
        *,
        request_id: str | None,
        image_url: str | None,
        revised_prompt: str,
        upstream_fen: int,
    ) -> bool:
        return await self._update(
            job_id,
            "state = 'generated', request_id = :request_id, image_url = :image_url,"
            " revised_prompt = :revised_prompt, upstream_fen = :upstream_fen, generated_at = :now",
            "state = 'submitting'",
            request_id=request_id,
            image_url=image_url or None,
            revised_prompt=revised_prompt or None,
            upstream_fen=upstream_fen,
        )

    async def set_image(self, job_id: int, sha256: str) -> bool:
        return await self._update(job_id, "image_sha256 = :sha256", "state = 'generated'", sha256=sha256)

    async def mark_cache_hit(self, job_id: int, *, sha256: str, request_id: str | None) -> bool:
        """Answered from the cache: straight to `generated` with the cached bytes, nothing billed."""
        return await self._update(
            job_id,
            "state = 'generated', cache_hit = 1, image_sha256 = :sha256, request_id = :request_id,"
            " upstream_fen = 0, started_at = COALESCE(started_at, :now), generated_at = :now",
            "state IN ('queued', 'submitting')",
            sha256=sha256,
            request_id=request_id,
        )

    async def mark_delivered(
        self,
        job_id: int,
        *,
        cost_fen: int,
        refund_scopes: frozenset[str] = frozenset(),
        result_message_id: int | None = None,
    ) -> bool:
        """Delivered and charged; the reserved counters of `refund_scopes` are given back (cache hits).
        `result_message_id`: the message that carries the image (for /history's links)."""
        async with self._store.transaction() as db:
            cursor = await db.execute(
                "UPDATE jobs SET state = 'delivered', cost_fen = :cost_fen, finished_at = :now,"
                " interaction_token = NULL, result_message_id = :result_message_id"
                " WHERE id = :id AND state = 'generated' RETURNING quota_json",
                {"id": job_id, "cost_fen": cost_fen, "now": self._store.now(), "result_message_id": result_message_id},
            )
            row = await cursor.fetchone()
            if row is None:
                return False
            if refund_scopes:
                await refund_charges(db, [c for c in charges_from_json(row[0]) if c.scope in refund_scopes])
        return True

    async def image_in_use(self, sha256: str) -> bool:
        """Whether an unfinished job still needs this stored image."""
        row = await self._store.fetch_one(
            "SELECT 1 FROM jobs WHERE image_sha256 = ? AND state IN ('queued', 'submitting', 'generated')", (sha256,)
        )
        return row is not None

    async def mark_failed(
        self, job_id: int, *, error_code: str, error_message: str, request_id: str | None = None
    ) -> bool:
        """Failed, never charged, and whatever the job reserved is given back, all at once."""
        async with self._store.transaction() as db:
            cursor = await db.execute(
                """
                UPDATE jobs SET state = 'failed', error_code = :error_code, error_message = :error_message,
                    request_id = COALESCE(:request_id, request_id), cost_fen = 0, finished_at = :now,
                    interaction_token = NULL
                WHERE id = :id AND state IN ('queued', 'submitting', 'generated')
                RETURNING quota_json
                """,
                {
                    "id": job_id,
                    "error_code": error_code,
                    "error_message": error_message[:1000],
                    "request_id": request_id,
                    "now": self._store.now(),
                },
            )
            row = await cursor.fetchone()
            if row is None:
                return False
            await refund_charges(db, charges_from_json(row[0]))
        return True

    async def cancel(self, job_id: int, *, error_message: str = "cancelled before it was sent") -> bool:
        """Cancelled while waiting: out of the queue, and what it reserved given back, in ONE
        transaction; False when it is no longer waiting (sent, claimed by a process, finished).

        The ledger keeps it as failed with error_code `Cancelled` (never charged), so no new state.
        The condition is the arbiter of a race with the dispatcher: a process that claimed the job
        (`claimed_by`) or marked it `submitting` wins, and this UPDATE then changes nothing.
        """
        async with self._store.transaction() as db:
            cursor = await db.execute(
                """
                UPDATE jobs SET state = 'failed', error_code = :error_code, error_message = :error_message,
                    cost_fen = 0, finished_at = :now, interaction_token = NULL,
                    queue_guild = NULL, fair_order = NULL
                WHERE id = :id AND state = 'queued' AND claimed_by IS NULL
                RETURNING quota_json
                """,
                {"id": job_id, "error_code": CANCELLED, "error_message": error_message, "now": self._store.now()},
            )
            row = await cursor.fetchone()
            if row is None:
                return False
            await refund_charges(db, charges_from_json(row[0]))
        return True

    async def _update(self, job_id: int, assignments: str, condition: str, **values: Any) -> bool:
        values.update(id=job_id, now=self._store.now())
        changed = await self._store.write(f"UPDATE jobs SET {assignments} WHERE id = :id AND {condition}", values)
        return changed == 1
