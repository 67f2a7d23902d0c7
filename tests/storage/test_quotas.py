"""Quota counters: conditional UPSERTs inside one transaction never overshoot a limit."""

from __future__ import annotations

import asyncio

import pytest

from bot.storage.connect import open_store
from bot.storage.db import Store
from bot.storage.quotas import (
    Charge,
    QuotaExceeded,
    apply_charges,
    charges_from_json,
    charges_to_json,
    refund_charges,
    take_cooldown,
)

pytestmark = pytest.mark.both_backends


@pytest.fixture
async def store(database_url: str):
    store = await open_store(database_url)
    yield store
    await store.close()


async def reserve(store: Store, charges: list[Charge]) -> bool:
    try:
        async with store.transaction() as db:
            await apply_charges(db, charges)
    except QuotaExceeded:
        return False
    return True


async def used(store: Store, scope: str, subject: str, period: str) -> int:
    row = await store.fetch_one(
        "SELECT used FROM quota_counters WHERE scope = ? AND subject = ? AND period = ?",
        (scope, subject, period),
    )
    return int(row[0]) if row else 0


async def test_fifty_users_twenty_requests_limit_five_is_exactly_250(store: Store) -> None:
    attempts = [
        reserve(store, [Charge("user_day", f"g:{user}", "2026-11-25", 1, limit=5)])
        for user in range(50)
        for _ in range(20)
    ]
    results = await asyncio.gather(*attempts)
    assert sum(results) == 250
    assert {await used(store, "user_day", f"g:{u}", "2026-11-25") for u in range(50)} == {5}


async def test_a_refused_charge_rolls_back_every_other_counter(store: Store) -> None:
    fits = Charge("user_day", "g:1", "d", 1, limit=10)
    budget = Charge("guild_day_fen", "g", "d", 18, limit=30)
    assert await reserve(store, [fits, budget])
    assert not await reserve(store, [fits, budget])  # 36 > 30 fen
    assert await used(store, "user_day", "g:1", "d") == 1  # not 2: the whole reservation rolled back
    assert await used(store, "guild_day_fen", "g", "d") == 18


async def test_zero_limit_refuses_even_the_first(store: Store) -> None:
    with pytest.raises(QuotaExceeded) as caught:
        async with store.transaction() as db:
            await apply_charges(db, [Charge("user_day", "g:1", "d", 1, limit=0)])
    assert caught.value.used == 0


async def test_unlimited_still_counts(store: Store) -> None:
    for _ in range(3):
        assert await reserve(store, [Charge("user_day", "g:1", "d", 1, limit=None)])
    assert await used(store, "user_day", "g:1", "d") == 3


async def test_refund_gives_back_to_the_same_period_and_never_below_zero(store: Store) -> None:
    charge = Charge("user_day", "g:1", "2026-11-25", 1, limit=1)
    assert await reserve(store, [charge])
    assert not await reserve(store, [charge])
    async with store.transaction() as db:
        await refund_charges(db, [charge, charge])
    assert await used(store, "user_day", "g:1", "2026-11-25") == 0
    assert await reserve(store, [charge])


async def test_cooldown_stamps_or_reports_the_blocking_stamp(store: Store) -> None:
    async with store.transaction() as db:
        assert await take_cooldown(db, "g:1", now_ms=10_000, cooldown_ms=5_000) is None
        assert await take_cooldown(db, "g:1", now_ms=12_000, cooldown_ms=5_000) == 10_000
        assert await take_cooldown(db, "g:1", now_ms=15_000, cooldown_ms=5_000) is None


def test_charges_round_trip_as_json() -> None:
    charges = [Charge("user_day", "g:1", "d", 1, 5), Charge("guild_month_fen", "g", "m", 18, None)]
    assert charges_from_json(charges_to_json(charges)) == charges
    assert charges_from_json(None) == []
