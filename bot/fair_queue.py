"""The fair order of waiting jobs: guilds take turns, and inside a guild users take turns.

Round-robin among guilds with waiting jobs; inside a guild, round-robin among users with
waiting jobs; each user's own jobs FIFO. A guild or user that appears goes to the back of the
turn order, so a flood from one guild or one user delays everyone else by at most one job per
turn. Taking the next job (``pop``) sends its user and its guild to the back of their turns.

Pure and synchronous: no asyncio, no clock, no limiter. The scheduler (``bot.scheduler``)
decides *when* a job leaves; this module only decides *which* one, and where every waiting
job (or a hypothetical new one) stands in that order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class QueueItem:
    job_id: int
    guild_key: str
    user_key: str
    enqueued_at: float


class Place(NamedTuple):
    guild_position: int  # 1-based among the guild's waiting jobs, in dispatch order
    global_position: int  # 1-based in the global dispatch order


@dataclass
class _GuildQueue:
    users: dict[str, deque[QueueItem]] = field(default_factory=dict)  # only users with waiting jobs
    turns: deque[str] = field(default_factory=deque)  # the users' round-robin order


def _round_robin(queues: Iterable[list[T]]) -> list[T]:
    """Interleave: first element of each queue in turn, then the second of each, and so on."""
    queues = list(queues)
    out: list[T] = []
    for r in range(max(map(len, queues), default=0)):
        out.extend(q[r] for q in queues if r < len(q))
    return out


class FairQueue:
    """Waiting jobs in two-level round-robin order (see the module docstring).

    Each job id is in the queue at most once. The full dispatch order is computed lazily and
    cached until the next change, so many position queries between changes cost one pass.
    """

    def __init__(self) -> None:
        self._guilds: dict[str, _GuildQueue] = {}  # only guilds with waiting jobs
        self._guild_turns: deque[str] = deque()
        self._items: dict[int, QueueItem] = {}
        self._order: list[QueueItem] | None = None  # cached dispatch order
        self._places: dict[int, Place] = {}  # valid while _order is not None

    @classmethod
    def restore(
        cls, guild_turns: Iterable[str], user_turns: Mapping[str, Iterable[str]], items: Iterable[QueueItem]
    ) -> FairQueue:
        """A queue in a given state (read back from the store's turns): guilds in turn order, each
        guild's users in turn order, each user's jobs in order. Turns with no waiting job are left out."""
        queue = cls()
        jobs: dict[tuple[str, str], deque[QueueItem]] = {}
        for item in items:
            jobs.setdefault((item.guild_key, item.user_key), deque()).append(item)
            queue._items[item.job_id] = item
        for g in guild_turns:
            gq = _GuildQueue()
            for u in user_turns.get(g, ()):
                if (g, u) in jobs and u not in gq.users:
                    gq.users[u] = jobs[(g, u)]
                    gq.turns.append(u)
            if gq.users and g not in queue._guilds:
                queue._guilds[g] = gq
                queue._guild_turns.append(g)
        queue._items = {i.job_id: i for gq in queue._guilds.values() for q in gq.users.values() for i in q}
        return queue

    # -- contents ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._items

    def get(self, job_id: int) -> QueueItem | None:
        return self._items.get(job_id)

    def count(self, guild_key: str, user_key: str | None = None) -> int:
        """Waiting jobs of a guild, or of one user in that guild."""
        gq = self._guilds.get(guild_key)
        if gq is None:
            return 0
        if user_key is not None:
            return len(gq.users.get(user_key, ()))
        return sum(map(len, gq.users.values()))

    # -- changes -------------------------------------------------------------------------------

    def push(self, item: QueueItem, *, front: bool = False) -> None:
        """Add a job at the back of its user's queue.

        ``front=True`` puts it at the head of its user's queue instead and makes that user and
        guild next in turn (a job the upstream refused with a 429 did not lose its turn).
        """
        if item.job_id in self._items:
            raise ValueError(f"job {item.job_id} is already queued")
        g, u = item.guild_key, item.user_key
        gq = self._guilds.get(g)
        if gq is None:
            gq = self._guilds[g] = _GuildQueue()
            self._guild_turns.append(g)
        if u not in gq.users:
            gq.users[u] = deque()
            gq.turns.append(u)
        if front:
            gq.users[u].appendleft(item)
            gq.turns.remove(u)
            gq.turns.appendleft(u)
            self._guild_turns.remove(g)
            self._guild_turns.appendleft(g)
        else:
            gq.users[u].append(item)
        self._items[item.job_id] = item
        self._order = None

    def pop(self) -> QueueItem | None:
        """Take the next job in fair order (None if empty); its user and guild go to the back."""
        if not self._guild_turns:
            return None
        gq = self._guilds[self._guild_turns[0]]
        item = gq.users[gq.turns[0]][0]
        self._guild_turns.rotate(-1)
        gq.turns.rotate(-1)
        self._remove(item)
        return item

    def discard(self, job_id: int) -> QueueItem | None:
        """Take a waiting job out wherever it stands; None if it is not waiting."""
        item = self._items.get(job_id)
        if item is not None:
            self._remove(item)
        return item

    # -- order and positions -------------------------------------------------------------------

    def order(self, guild_key: str | None = None) -> list[QueueItem]:
        """Waiting jobs in the order ``pop`` would take them (of one guild, or all); a new list."""
        order = self._dispatch_order()
        return list(order) if guild_key is None else [i for i in order if i.guild_key == guild_key]

    def place(self, job_id: int) -> Place | None:
        """Where a waiting job stands; None if it is not waiting."""
        self._dispatch_order()
        return self._places.get(job_id)

    def places(self) -> dict[int, Place]:
        """Every waiting job's place, from one pass over the order."""
        self._dispatch_order()
        return dict(self._places)

    def prospective_position(self, guild_key: str, user_key: str) -> int:
        """The global position (1-based) a new job of this user would get if pushed now."""
        turns = list(self._guild_turns)
        if guild_key not in turns:
            turns.append(guild_key)
        seqs = [self._guild_sequence(g, user_key if g == guild_key else None) for g in turns]
        return _round_robin(seqs).index(None) + 1

    # -- internals -----------------------------------------------------------------------------

    def _remove(self, item: QueueItem) -> None:
        """Take a waiting item out; a user or guild left with nothing leaves the turn order."""
        del self._items[item.job_id]
        g, u = item.guild_key, item.user_key
        gq = self._guilds[g]
        gq.users[u].remove(item)
        if not gq.users[u]:
            del gq.users[u]
            gq.turns.remove(u)
        if not gq.users:
            del self._guilds[g]
            self._guild_turns.remove(g)
        self._order = None

    def _guild_sequence(self, g: str, extra_user: str | None = None) -> list[QueueItem | None]:
        """The guild's waiting jobs in dispatch order; ``None`` marks a hypothetical new job."""
        gq = self._guilds.get(g) or _GuildQueue()
        queues: list[list[QueueItem | None]] = [list(gq.users[u]) for u in gq.turns]
        if extra_user is not None:
            if extra_user in gq.users:
                queues[list(gq.turns).index(extra_user)].append(None)
            else:
                queues.append([None])
        return _round_robin(queues)

    def _dispatch_order(self) -> list[QueueItem]:
        if self._order is None:
            seqs = [self._guild_sequence(g) for g in self._guild_turns]
            in_guild = {it.job_id: n for seq in seqs for n, it in enumerate(seq, 1) if it is not None}
            self._order = [it for it in _round_robin(seqs) if it is not None]
            self._places = {it.job_id: Place(in_guild[it.job_id], n) for n, it in enumerate(self._order, 1)}
        return self._order
