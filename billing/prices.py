"""Model prices as the hot paths read them: the whole price history, cached per process.

The ledger prices every usage record it writes, and admission prices every request's worst
case; neither may query the database per request. Both read a `PriceTable` (every price ever
set: the table is small) cached for one cache epoch (`infra.epoch`): setting a price bumps the
epoch, so web processes drop the table on their next admission, and the ledger, which runs
where no admission does, compares the epoch once per batch.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import redis
from django.conf import settings

from billing.units import cost as tokens_cost
from billing.units import token_units
from infra.db import run_db
from infra.epoch import EPOCH_KEY, EpochCache, current_epoch
from infra.redis_client import REDIS_ERRORS
from models_registry.models import ModelPrice

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Price:
    prompt_per_million: Decimal
    completion_per_million: Decimal

    @property
    def prompt_units(self) -> int:
        return token_units(self.prompt_per_million)

    @property
    def completion_units(self) -> int:
        return token_units(self.completion_per_million)


FREE = Price(ZERO, ZERO)


@dataclass(frozen=True)
class PriceTable:
    """Every model's prices over time: model name → (start times ascending, prices)."""

    history: dict[str, tuple[list[float], list[Price]]] = field(default_factory=dict)

    def at(self, model: str, when: float) -> Price:
        """The price in effect at Unix time `when`: the latest that started at or before it.
        A model nobody priced (or before its first price) is free."""
        entry = self.history.get(model)
        if entry is None:
            return FREE
        starts, prices = entry
        index = bisect.bisect_right(starts, when) - 1
        return prices[index] if index >= 0 else FREE

    def cost(self, model: str, when: float, prompt_tokens: int, completion_tokens: int) -> Decimal:
        price = self.at(model, when)
        return tokens_cost(
            prompt_tokens,
            completion_tokens,
            prompt_price=price.prompt_per_million,
            completion_price=price.completion_per_million,
        )


def price_table_load() -> PriceTable:
    history: dict[str, tuple[list[float], list[Price]]] = {}
    rows = ModelPrice.objects.order_by("model_name", "effective_from").values_list(
        "model_name", "effective_from", "prompt_per_million", "completion_per_million"
    )
    for name, start, prompt, completion in rows:
        starts, prices = history.setdefault(name, ([], []))
        starts.append(start.timestamp())
        prices.append(Price(prompt, completion))
    return PriceTable(history)


# --- Web processes: valid for the epoch the admission script confirms ---------------------------

_admission_tables: EpochCache[str, PriceTable] = EpochCache("prices")


async def price_table_current() -> PriceTable:
    cached = _admission_tables.get("table")
    if isinstance(cached, PriceTable):
        return cached
    epoch = current_epoch()
    table = await run_db(price_table_load)
    _admission_tables.put("table", table, epoch=epoch)
    return table


# --- The ledger: one epoch read per batch --------------------------------------------------------


@dataclass
class _LedgerTable:
    epoch: object = None
    loaded_at: float = -1e9
    table: PriceTable | None = None


_ledger = _LedgerTable()


def price_table_for_ledger(client: redis.Redis | None) -> PriceTable:
    """The table, reloaded if the epoch moved since it was read (or, without Redis, after
    NEBULA_CACHE_TTL)."""
    epoch: object = _ledger.epoch
    if client is not None:
        try:
            epoch = client.get(EPOCH_KEY)
        except REDIS_ERRORS:
            epoch = _ledger.epoch
    stale = time.monotonic() - _ledger.loaded_at > settings.NEBULA_CACHE_TTL
    if _ledger.table is None or epoch != _ledger.epoch or stale:
        _ledger.table = price_table_load()
        _ledger.epoch = epoch
        _ledger.loaded_at = time.monotonic()
    return _ledger.table


def price_tables_forget() -> None:
    """Drop what this process cached (tests, and a price set in this very process)."""
    _ledger.table = None
    _admission_tables.clear()


def price_at(model: str, when: datetime) -> Price:
    """The price in effect at `when`, from the database (for pages, not hot paths)."""
    row = (
        ModelPrice.objects.filter(model_name=model, effective_from__lte=when)
        .order_by("-effective_from")
        .first()
    )
    if row is None:
        return FREE
    return Price(row.prompt_per_million, row.completion_per_million)


def current_prices() -> list[ModelPrice]:
    """Each model's latest price (one set for later included: it shows until it starts)."""
    latest: dict[str, ModelPrice] = {}
    for price in ModelPrice.objects.order_by("model_name", "-effective_from"):
        latest.setdefault(price.model_name, price)
    return list(latest.values())
