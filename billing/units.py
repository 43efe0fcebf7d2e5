"""Money as integers: what Redis and the admission script count in.

A price is per million tokens with at most `PRICE_PLACES` decimals, so one token costs a whole
number of `UNIT`s (10⁻¹⁰, the precision of `UsageRecord.cost`): every cost is an exact integer
of units, in Python, in Redis (INCRBY) and in Lua. Lua counts in doubles, exact up to 2⁵³
units, which is what bounds a budget's amount (`MAX_AMOUNT`).
"""

from __future__ import annotations

from decimal import Decimal

UNIT = Decimal("1e-10")
UNITS_PER_CURRENCY = 10**10
PRICE_PLACES = 4
# Token price (per million) → price of one token in units: P / 10⁶ / 10⁻¹⁰ = P · 10⁴.
_UNITS_PER_PRICE = 10**4
MAX_AMOUNT = Decimal(900_000)  # 2⁵³ units ≈ 900,719.9
MAX_PRICE = Decimal("99999999.9999")


def token_units(price_per_million: Decimal) -> int:
    """What one token costs in units, at a price per million tokens (exact)."""
    return int(price_per_million * _UNITS_PER_PRICE)


def to_units(amount: Decimal) -> int:
    return int(amount * UNITS_PER_CURRENCY)


def from_units(units: int) -> Decimal:
    return (Decimal(units) * UNIT).quantize(UNIT)


def cost(
    prompt_tokens: int, completion_tokens: int, *, prompt_price: Decimal, completion_price: Decimal
) -> Decimal:
    """What tokens cost at prices per million tokens: exact, never rounded (see above)."""
    return from_units(
        prompt_tokens * token_units(prompt_price)
        + completion_tokens * token_units(completion_price)
    )
