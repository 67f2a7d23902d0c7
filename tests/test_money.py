"""bot/money.py: the one conversion each way between CNY (Decimal) and integer fen, and its one rule."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bot.admin import parse_cny
from bot.config import load_settings
from bot.errors import ConfigError, InvalidInput
from bot.gatekeeper import default_policy
from bot.money import cny_to_fen, fen_to_cny, format_cny


@pytest.mark.parametrize(
    ("cny", "fen"),
    [
        ("0.18", 18),
        ("1.05", 105),
        ("10", 1000),
        ("0", 0),
        ("0.01", 1),
        ("0.180", 18),  # trailing zeros are still whole fen
        ("1E+1", 1000),
        ("12345678.99", 1_234_567_899),
        ("-0.05", -5),
    ],
)
def test_an_amount_in_whole_fen_converts_exactly(cny: str, fen: int) -> None:
    assert cny_to_fen(Decimal(cny)) == fen


def test_whole_yuan_as_int_converts() -> None:
    assert cny_to_fen(3) == 300


@pytest.mark.parametrize("cny", ["0.185", "0.005", "0.001", "12.345", "0.0100001"])
def test_an_amount_finer_than_a_fen_is_refused_never_rounded(cny: str) -> None:
    with pytest.raises(ValueError, match=rf"^{cny} CNY is finer than one fen"):
        cny_to_fen(Decimal(cny))


@pytest.mark.parametrize("cny", ["NaN", "Infinity", "-Infinity", "sNaN"])
def test_a_non_finite_amount_is_refused(cny: str) -> None:
    with pytest.raises(ValueError, match="not an amount"):
        cny_to_fen(Decimal(cny))


def test_a_float_is_refused_money_never_goes_through_binary_floating_point() -> None:
    with pytest.raises(TypeError):
        cny_to_fen(0.18)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fen", "cny"),
    [
        (18, "0.18"),
        (0, "0.00"),
        (5, "0.05"),
        (100, "1.00"),
        (1000, "10.00"),
        (1_234_567_899, "12345678.99"),
        (-5, "-0.05"),
        (-123, "-1.23"),
    ],
)
def test_fen_to_cny_is_exact_text_with_two_decimals(fen: int, cny: str) -> None:
    assert fen_to_cny(fen) == cny


def test_the_two_conversions_are_inverse() -> None:
    for fen in (*range(-250, 251), 10**9 + 7):
        assert cny_to_fen(Decimal(fen_to_cny(fen))) == fen


def test_format_cny_is_the_amount_with_the_yuan_sign() -> None:
    assert (format_cny(18), format_cny(0), format_cny(1250)) == ("¥0.18", "¥0.00", "¥12.50")


# -- every place that converts uses the rule -----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GUILD_DAILY_BUDGET_CNY", "0.005"),
        ("GUILD_MONTHLY_BUDGET_CNY", "0.005"),
        ("PRICE_PER_IMAGE_CNY", "0.185"),
    ],
)
def test_a_sub_fen_budget_and_a_sub_fen_price_are_refused_by_the_same_rule(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    assert caught.value.message.startswith(f"{name} is invalid: {value} CNY is finer than one fen")


def test_configured_price_and_budgets_become_fen_by_the_one_rule() -> None:
    settings = load_settings(
        _env_file=None, price_per_image_cny="0.19", guild_daily_budget_cny="12.34", guild_monthly_budget_cny="none"
    )
    assert settings.price_per_image_fen == 19
    assert (settings.guild_daily_budget_fen, settings.guild_monthly_budget_fen) == (1234, None)
    policy = default_policy(settings)
    assert (policy.daily_budget_fen, policy.monthly_budget_fen) == (1234, None)


def test_an_admin_amount_uses_the_same_rule() -> None:
    assert parse_cny("12.34") == cny_to_fen(Decimal("12.34")) == 1234
    with pytest.raises(InvalidInput, match="at most two decimals"):
        parse_cny("0.185")
