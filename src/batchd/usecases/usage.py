"""Usage and cost (batchd's own): tokens and requests as the store summed them when results
were recorded, priced with the config's optional ``[[prices]]`` tables.

A batch's cost is its tokens at the interactive price less the batch discount; beside it
stands what the same tokens would have cost interactively. A model no price table matches
has no cost (``None``), and a sum with such a model says so (``unpriced``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from batchd.config import PriceConfig
from batchd.domain import Batch, DailyUsage, ModelUsage, TokenUsage, utc_day
from batchd.errors import InvalidRequest, NotFound
from batchd.store import Store

MILLION = 1_000_000
DEFAULT_DAYS = 30
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def since_day(since: str | None, now: float) -> str:
    """``since`` checked (``YYYY-MM-DD``), or the day DEFAULT_DAYS before ``now``."""
    if since is None:
        return utc_day(now - DEFAULT_DAYS * 86400)
    try:
        time.strptime(since, "%Y-%m-%d")
    except ValueError:
        raise InvalidRequest(f"since: {since!r} is not a day (YYYY-MM-DD)") from None
    if not _DAY.fullmatch(since):
        raise InvalidRequest(f"since: {since!r} is not a day (YYYY-MM-DD)")
    return since


@dataclass(frozen=True, slots=True)
class Cost:
    batch: float  # at the batch price
    interactive: float  # the same tokens at the interactive price
    unpriced: tuple[str, ...] = ()  # models in the sum that no price table matches

    def __add__(self, other: Cost) -> Cost:
        unpriced = tuple(sorted(set(self.unpriced) | set(other.unpriced)))
        return Cost(self.batch + other.batch, self.interactive + other.interactive, unpriced)


class Prices:
    """The price table: model -> cost of tokens."""

    def __init__(self, tables: Sequence[PriceConfig], currency: str = "USD") -> None:
        self.tables = tuple(tables)
        self.currency = currency

    def __bool__(self) -> bool:
        return bool(self.tables)

    def table_for(self, model: str) -> PriceConfig | None:
        return next((t for t in self.tables if any(fnmatchcase(model, g) for g in t.models)), None)

    def cost(self, model: str, tokens: TokenUsage) -> Cost:
        table = self.table_for(model)
        if table is None:
            return Cost(0.0, 0.0, (model,) if model else ())
        cache_read = table.input if table.cache_read is None else table.cache_read
        interactive = (
            tokens.input_tokens * table.input
            + tokens.output_tokens * table.output
            + tokens.cache_read_tokens * cache_read
        ) / MILLION
        return Cost(interactive * (1 - table.batch_discount), interactive)

    def total(self, usages: Sequence[tuple[str, TokenUsage]]) -> Cost:
        total = Cost(0.0, 0.0)
        for model, tokens in usages:
            total += self.cost(model, tokens)
        return total


@dataclass(frozen=True, slots=True)
class BatchUsage:
    batch: Batch
    models: list[ModelUsage]
    tokens: TokenUsage
    cost: Cost | None  # None: no price table configured


class UsageService:
    def __init__(self, store: Store, prices: Prices, clock: Callable[[], float]) -> None:
        self._store = store
        self.prices = prices
        self._clock = clock

    async def batch(self, workspace: str, batch_id: str) -> BatchUsage:
        """A batch's usage (404 for a batch of another workspace, as the batch itself)."""
        batch = await self._store.get_batch(workspace, batch_id)
        if batch is None:
            raise NotFound(f"message batch {batch_id!r} not found")
        models = await self._store.batch_usage(batch.seq)
        tokens = sum((m.tokens for m in models), TokenUsage())
        cost = self.prices.total([(m.model, m.tokens) for m in models]) if self.prices else None
        return BatchUsage(batch, models, tokens, cost)

    async def daily(self, workspace: str | None, since: str) -> list[DailyUsage]:
        """Usage per UTC day, workspace and model from ``since`` on."""
        return await self._store.daily_usage(workspace, since)

    def cost(self, model: str, tokens: TokenUsage) -> Cost | None:
        return self.prices.cost(model, tokens) if self.prices else None
