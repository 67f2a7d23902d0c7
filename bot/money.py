"""Money: CNY (a Decimal, as people write it) <-> integer fen (as everything below the edges keeps it).

One function each way, one rule:

- `cny_to_fen` is exact. An amount with at most two decimals (0.18, 12.5, 10) is that many fen;
  an amount finer than a fen (0.185, 0.005) is refused with ValueError, never rounded. Nothing
  is ever charged, budgeted or shown at a sub-fen precision, so a rounded value would only be a
  number the operator or admin did not write (a 0.005 budget truncated to 0 blocks every image;
  rounded up, it is twice what was set). Settings and the admin commands both refuse such an
  amount, each with its own wording, through this function.
- `fen_to_cny` is exact too: the amount as decimal text with exactly two decimals ("0.18",
  "-0.05"), which `Decimal()` reads back to the same amount. `format_cny` adds the yuan sign.

Floats are refused: 0.18 has no exact binary value.
"""

from __future__ import annotations

from decimal import Decimal

_MAX_FEN, _MIN_FEN = 2**63 - 1, -(2**63)  # fen are stored as SQLite (and PostgreSQL bigint) 64-bit integers
_MAX_DIGITS = 17  # 10**17 CNY is already more fen than a 64-bit integer holds


def cny_to_fen(amount: Decimal | int) -> int:
    """0.18 CNY -> 18 fen, exactly; ValueError for an amount finer than a fen, not finite, or too large.

    Integer arithmetic on the Decimal's digits: no context precision can round a long amount.
    """
    if isinstance(amount, bool) or not isinstance(amount, Decimal | int):
        raise TypeError(f"an amount in CNY is a Decimal or an int, not {type(amount).__name__}")
    cny = Decimal(amount)
    if not cny.is_finite():
        raise ValueError(f"{amount} is not an amount in CNY")
    if cny and cny.adjusted() >= _MAX_DIGITS:
        raise ValueError(f"{amount} CNY is too large")
    sign, digits, exponent = cny.as_tuple()
    coefficient = int("".join(map(str, digits)))
    shift = int(exponent) + 2  # fen are hundredths
    if shift >= 0:
        fen = coefficient * 10**shift
    else:
        fen, rest = divmod(coefficient, 10**-shift)
        if rest:
            raise ValueError(f"{amount} CNY is finer than one fen (0.01 CNY): give at most two decimals")
    fen = -fen if sign else fen
    if not _MIN_FEN <= fen <= _MAX_FEN:
        raise ValueError(f"{amount} CNY is too large")
    return fen


def fen_to_cny(fen: int) -> str:
    """18 fen -> "0.18": exact decimal text, always two decimals (no float on the way)."""
    return str(Decimal(int(fen)).scaleb(-2))


def format_cny(fen: int) -> str:
    """18 fen -> "¥0.18", the way the bot shows money to people."""
    return f"¥{fen_to_cny(fen)}"
