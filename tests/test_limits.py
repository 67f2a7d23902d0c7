"""Pure limit policy (bot/limits.py): role overrides, stored overrides, periods in the guild's time zone."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from bot.errors import InvalidInput
from bot.limits import GuildPolicy, RoleLimit, discord_time, member_limits, periods, validate_timezone

NEWCOMER, MEMBER, VIP, PATRON, STAFF = 1, 2, 3, 4, 5


def policy(**overrides: object) -> GuildPolicy:
    values: dict[str, object] = {
        "user_daily_limit": 20,
        "user_monthly_limit": 300,
        "cooldown_s": 0,
        "daily_budget_fen": 1000,
        "monthly_budget_fen": 10000,
    }
    values.update(overrides)
    return GuildPolicy(**values)  # type: ignore[arg-type]


ROLES = {
    NEWCOMER: RoleLimit(daily=2, monthly=10),
    VIP: RoleLimit(daily=50, monthly=500),
    PATRON: RoleLimit(daily=40, monthly=None),
    STAFF: RoleLimit(daily=None, monthly=None),
}


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


# -- member_limits ------------------------------------------------------------------------------


def test_a_member_without_an_overridden_role_gets_the_guild_defaults() -> None:
    assert member_limits(policy(role_limits=ROLES), [MEMBER]) == (20, 300)
    assert member_limits(policy(role_limits=ROLES), []) == (20, 300)


def test_an_override_replaces_the_default_even_when_it_is_lower() -> None:
    assert member_limits(policy(role_limits=ROLES), [NEWCOMER, MEMBER]) == (2, 10)


def test_among_several_overrides_the_most_generous_wins_per_period() -> None:
    assert member_limits(policy(role_limits=ROLES), [NEWCOMER, VIP]) == (50, 500)


def test_unlimited_beats_any_number() -> None:
    # VIP has the larger daily number, PATRON an unlimited month: each period takes its best
    assert member_limits(policy(role_limits=ROLES), [VIP, PATRON]) == (50, None)
    assert member_limits(policy(role_limits=ROLES), [NEWCOMER, VIP, STAFF]) == (None, None)


def test_a_role_can_lower_an_unlimited_default() -> None:
    unlimited = policy(user_daily_limit=None, user_monthly_limit=None, role_limits=ROLES)
    assert member_limits(unlimited, [NEWCOMER]) == (2, 10)
    assert member_limits(unlimited, [MEMBER]) == (None, None)


# -- stored overrides -------------------------------------------------------------------------------


def test_overrides_from_json_replace_defaults_and_convert_role_and_channel_ids() -> None:
    stored = json.loads(
        json.dumps(
            {
                "user_daily_limit": 5,
                "timezone": "Asia/Shanghai",
                "role_limits": {"3": {"daily": 50, "monthly": None}, "1": {"daily": 1}},
                "allowed_channels": [77, 78],
                "log_channel_id": 99,
                "something_from_a_newer_version": True,
            }
        )
    )
    result = policy().with_overrides(stored)
    assert result.user_daily_limit == 5
    assert result.user_monthly_limit == 300  # untouched default
    assert result.timezone == "Asia/Shanghai"
    assert dict(result.role_limits) == {3: RoleLimit(50, None), 1: RoleLimit(1, 300)}  # unset month: the guild's
    assert result.allowed_channels == frozenset({77, 78})
    assert result.log_channel_id == 99
    assert member_limits(result, [VIP]) == (50, None)  # string ids from JSON match Discord's int role ids


def test_no_overrides_is_the_default_policy() -> None:
    assert policy().with_overrides({}) == policy()


def test_channels_are_all_allowed_until_some_are_listed() -> None:
    assert policy().channel_allowed(123)
    listed = policy().with_overrides({"allowed_channels": [7]})
    assert listed.channel_allowed(7)
    assert not listed.channel_allowed(8)
    assert not listed.channel_allowed(None)


# -- periods ----------------------------------------------------------------------------------------


def test_periods_in_utc() -> None:
    current = periods(utc(2026, 11, 25, 13, 45), "UTC")
    assert (current.day, current.month) == ("2026-11-25", "2026-11")
    assert current.day_resets_at == utc(2026, 11, 26)
    assert current.month_resets_at == utc(2026, 12, 1)


def test_periods_in_shanghai_half_past_eleven_utc_is_already_the_next_local_day() -> None:
    current = periods(utc(2026, 11, 25, 23, 30), "Asia/Shanghai")  # 07:30 on the 26th in Shanghai
    assert (current.day, current.month) == ("2026-11-26", "2026-11")
    assert current.day_resets_at == utc(2026, 11, 26, 16)  # Shanghai midnight is 16:00 UTC
    assert current.month_resets_at == utc(2026, 11, 30, 16)


def test_shanghai_day_rolls_over_at_local_midnight_not_utc_midnight() -> None:
    before = periods(utc(2026, 11, 25, 15, 59, 59), "Asia/Shanghai")
    after = periods(utc(2026, 11, 25, 16, 0, 0), "Asia/Shanghai")
    assert (before.day, after.day) == ("2026-11-25", "2026-11-26")
    assert before.day_resets_at == utc(2026, 11, 25, 16)


def test_new_york_day_before_spring_forward_resets_at_local_midnight_in_standard_time() -> None:
    current = periods(utc(2026, 3, 8, 3, 30), "America/New_York")  # 22:30 EST on March 7
    assert current.day == "2026-03-07"
    assert current.day_resets_at == utc(2026, 3, 8, 5)  # 00:00 EST (UTC-5)


def test_new_york_on_the_spring_forward_day_resets_at_local_midnight_in_daylight_time() -> None:
    current = periods(utc(2026, 3, 8, 12), "America/New_York")  # 08:00 EDT on March 8 (a 23-hour day)
    assert current.day == "2026-03-08"
    assert current.day_resets_at == utc(2026, 3, 9, 4)  # 00:00 EDT (UTC-4)
    assert current.month_resets_at == utc(2026, 4, 1, 4)


def test_new_york_on_the_fall_back_day_lasts_25_hours() -> None:
    current = periods(utc(2026, 11, 1, 4, 30), "America/New_York")  # 00:30 EDT on November 1
    assert current.day == "2026-11-01"
    assert current.day_resets_at == utc(2026, 11, 2, 5)  # 00:00 EST (UTC-5)
    assert periods(utc(2026, 11, 2, 4, 59), "America/New_York").day == "2026-11-01"


def test_months_roll_over_from_december_to_january_of_the_next_year() -> None:
    current = periods(utc(2026, 12, 31, 23, 59), "UTC")
    assert (current.day, current.month) == ("2026-12-31", "2026-12")
    assert current.day_resets_at == current.month_resets_at == utc(2027, 1, 1)
    new_year = periods(utc(2027, 1, 1), "UTC")
    assert (new_year.day, new_year.month) == ("2027-01-01", "2027-01")
    assert new_year.month_resets_at == utc(2027, 2, 1)


def test_the_new_year_arrives_earlier_in_shanghai() -> None:
    current = periods(utc(2026, 12, 31, 16, 30), "Asia/Shanghai")  # 00:30 on January 1 in Shanghai
    assert (current.day, current.month) == ("2027-01-01", "2027-01")
    assert current.month_resets_at == utc(2027, 1, 31, 16)


def test_reset_instants_are_utc_and_in_the_future() -> None:
    now = utc(2026, 2, 28, 18)
    for zone in ("UTC", "Asia/Shanghai", "America/New_York", "Pacific/Kiritimati", "Pacific/Pago_Pago"):
        current = periods(now, zone)
        assert current.day_resets_at.utcoffset() == UTC.utcoffset(None)
        assert now < current.day_resets_at <= current.month_resets_at


# -- time zone names and Discord timestamps -------------------------------------------------------------


@pytest.mark.parametrize("name", ["UTC", "Asia/Shanghai", "America/New_York", "Europe/Berlin"])
def test_valid_time_zones_are_returned_unchanged(name: str) -> None:
    assert validate_timezone(name) == name


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "", "Asia/Shanghai ", "../../etc/passwd", "/etc/localtime"])
def test_unknown_time_zones_are_refused_naming_the_value(name: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_timezone(name)
    assert refused.value.field == "timezone"
    assert f"'{name}'" in refused.value.message
    assert "IANA" in refused.value.message


def test_discord_time_is_a_relative_timestamp_in_whole_seconds() -> None:
    assert discord_time(utc(2026, 11, 26)) == "<t:1795651200:R>"
    assert discord_time(utc(2026, 11, 26, 0, 0, 0), "f") == "<t:1795651200:f>"
