"""The fair order on its own: guilds take turns, users take turns inside a guild (synchronous)."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from bot.fair_queue import FairQueue, Place, QueueItem


class Q:
    """A FairQueue plus numbered jobs, so a test reads as a script of arrivals and departures."""

    def __init__(self) -> None:
        self.queue = FairQueue()
        self._ids = itertools.count(1)

    def add(self, guild: str, user: str, front: bool = False) -> QueueItem:
        item = QueueItem(next(self._ids), guild, user, 0.0)
        self.queue.push(item, front=front)
        return item

    def drain(self) -> list[QueueItem]:
        out = []
        while (item := self.queue.pop()) is not None:
            out.append(item)
        return out


def test_empty_queue():
    q = FairQueue()
    assert not q and len(q) == 0
    assert q.pop() is None and q.order() == [] and q.places() == {}
    assert q.discard(1) is None and q.place(1) is None and q.count("G") == 0
    assert q.prospective_position("G", "u") == 1


def test_users_take_turns_within_a_guild():
    q = Q()
    jobs = [q.add("G", "u1") for _ in range(4)] + [q.add("G", "u2") for _ in range(2)] + [q.add("G", "u3")]
    assert [i.user_key for i in q.queue.order()] == ["u1", "u2", "u3", "u1", "u2", "u1", "u1"]
    popped = q.drain()
    assert [i.user_key for i in popped] == ["u1", "u2", "u3", "u1", "u2", "u1", "u1"]
    assert sorted(i.job_id for i in popped) == [j.job_id for j in jobs]
    u1 = [i for i in popped if i.user_key == "u1"]
    assert u1 == jobs[:4]  # each user's own jobs FIFO


def test_guilds_take_turns_even_against_a_flood():
    q = Q()
    flood = [q.add("A", f"a{u}") for u in range(10)]
    assert q.queue.pop() is flood[0]
    b = q.add("B", "b")  # arrives after A's turn came round again: one more A job, then B
    assert q.queue.order()[:3] == [flood[1], b, flood[2]]
    assert q.drain() == [flood[1], b, *flood[2:]]


def test_a_newcomer_waits_at_most_one_turn_behind_a_flooding_user():
    q = Q()
    flood = [q.add("G", "flood") for _ in range(100)]
    late = q.add("G", "late")
    other_guild = q.add("H", "h")
    assert q.queue.order()[:4] == [flood[0], other_guild, late, flood[1]]
    assert q.queue.place(other_guild.job_id) == Place(1, 2)
    assert q.queue.place(late.job_id) == Place(2, 3)


def test_order_and_places_follow_the_round_robin():
    q = Q()
    a1, a2, a3 = (q.add("A", "u1") for _ in range(3))
    a4 = q.add("A", "u2")
    b = q.add("B", "b")
    order = [a1, b, a4, a2, a3]
    assert q.queue.order() == order
    assert q.queue.order("A") == [a1, a4, a2, a3]
    assert q.queue.place(a2.job_id) == Place(3, 4)
    assert q.queue.places() == {
        a1.job_id: Place(1, 1),
        b.job_id: Place(1, 2),
        a4.job_id: Place(2, 3),
        a2.job_id: Place(3, 4),
        a3.job_id: Place(4, 5),
    }
    assert q.queue.pop() is a1
    assert q.queue.place(a1.job_id) is None
    assert q.queue.place(b.job_id) == Place(1, 1)
    assert q.queue.place(a2.job_id) == Place(2, 3)


def test_returned_lists_are_copies():
    q = Q()
    item = q.add("A", "a")
    q.queue.order().clear()
    q.queue.places().clear()
    assert q.queue.order() == [item] and q.queue.place(item.job_id) == Place(1, 1)


def test_push_front_after_a_429_makes_the_job_its_user_and_guild_next():
    q = Q()
    first, later = q.add("A", "a1"), q.add("A", "a1")
    other_user, other_guild = q.add("A", "a2"), q.add("B", "b")
    assert q.queue.pop() is first  # dispatched, then refused by the upstream
    q.queue.push(first, front=True)
    assert q.drain() == [first, other_guild, other_user, later]


def test_push_front_of_a_job_whose_user_and_guild_left_the_queue():
    q = Q()
    lone = q.add("A", "a")
    b1, b2 = q.add("B", "b"), q.add("B", "b")
    assert q.queue.pop() is lone
    q.queue.push(lone, front=True)
    assert q.drain() == [lone, b1, b2]


def test_a_job_is_queued_at_most_once():
    q = Q()
    item = q.add("A", "a")
    with pytest.raises(ValueError):
        q.queue.push(item)
    assert len(q.queue) == 1 and item.job_id in q.queue and q.queue.get(item.job_id) is item


def test_discard_anywhere_and_empty_users_and_guilds_leave_the_turns():
    q = Q()
    a1, a2 = q.add("A", "u1"), q.add("A", "u1")
    lone = q.add("A", "u2")
    b = q.add("B", "b")
    assert q.queue.discard(a2.job_id) is a2
    assert q.queue.discard(a2.job_id) is None
    assert q.queue.discard(lone.job_id) is lone  # u2 leaves A's turns
    assert q.queue.count("A") == 1 and q.queue.count("A", "u2") == 0
    assert q.queue.discard(b.job_id) is b  # B leaves the guild turns
    assert q.queue.count("B") == 0
    assert q.queue.order() == [a1]
    c = q.add("C", "c")
    assert q.drain() == [a1, c]
    assert not q.queue


def test_counts_per_guild_and_user():
    q = Q()
    q.add("A", "u1")
    q.add("A", "u1")
    q.add("A", "u2")
    q.add("B", "u1")
    assert (q.queue.count("A"), q.queue.count("A", "u1"), q.queue.count("A", "u2")) == (3, 2, 1)
    assert (q.queue.count("B"), q.queue.count("B", "u2"), q.queue.count("C", "u1")) == (1, 0, 0)
    assert len(q.queue) == 4


def test_prospective_position_is_where_a_new_job_would_land():
    q = Q()
    for u in range(5):
        q.add("A", f"a{u}")
    assert q.queue.prospective_position("A", "late") == 6  # A's users take turns: last
    assert q.queue.prospective_position("B", "b") == 2  # a new guild goes right after A's head
    assert q.queue.prospective_position("A", "a0") == 6  # a0's second job: after the others' first
    q.add("A", "a0")
    q.add("B", "b")
    assert q.queue.prospective_position("B", "b") == 4  # B's second job: A, B, A, then B again
    assert q.queue.prospective_position("B", "b2") == 4


@pytest.mark.parametrize("seed", range(5))
def test_prospective_position_matches_an_actual_push(seed: int):
    rng = random.Random(seed)
    q = Q()
    for _ in range(60):
        guild, user = f"g{rng.randrange(4)}", f"u{rng.randrange(3)}"
        if rng.random() < 0.3:
            q.queue.pop()
        expected = q.queue.prospective_position(guild, user)
        item = q.add(guild, user)
        assert q.queue.place(item.job_id).global_position == expected


@pytest.mark.parametrize("seed", range(5))
def test_no_guild_waits_more_than_one_round(seed: int):
    """Random arrivals: between two turns of a waiting guild, no other guild gets two turns.

    So a guild with waiting jobs waits at most (number of active guilds - 1) dispatches.
    """
    rng = random.Random(seed)
    q = Q()
    waiting: Counter[str] = Counter()
    served_since: dict[str, Counter[str]] = {}  # per waiting guild: turns others got since its own
    dispatched = 0
    for _ in range(400):
        for _ in range(rng.choice([0, 0, 1, 1, 2, 4])):
            g = f"g{rng.randrange(6)}"
            if waiting[g] == 0:
                served_since[g] = Counter()
            waiting[g] += 1
            q.add(g, f"u{rng.randrange(4)}")
        item = q.queue.pop()
        if item is None:
            continue
        dispatched += 1
        g = item.guild_key
        for other in [k for k, v in waiting.items() if v > 0 and k != g]:
            assert served_since[other][g] == 0, f"{g} served twice while {other} waited"
            served_since[other][g] += 1
        waiting[g] -= 1
        served_since[g] = Counter()
    assert dispatched > 300
