"""Estimates before running (batchd's own): what a create-batch body would take, creating
nothing.

Each request's input tokens are counted by the backend that would serve it, as
``count_tokens`` counts them (a local model's tokenizer: exact; an upstream's count; else
the documented estimate of about four characters a token), and its ``max_tokens`` is the
bound on its output. Requests the create would refuse (bad params, a model no backend
serves) are counted apart. The cost, where prices are configured, is at that bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from batchd.backends.router import Router
from batchd.domain import TokenUsage
from batchd.errors import InvalidRequest
from batchd.usecases.tokens import TokenService
from batchd.usecases.usage import Cost, Prices
from batchd.validation import check_params, parse_create_body

COUNTED_KEYS = ("model", "messages", "system", "tools")  # a count_tokens body's


@dataclass(frozen=True, slots=True)
class ModelEstimate:
    model: str
    backend: str
    method: str  # how its backend counts: tokenizer, upstream or estimate
    requests: int
    input_tokens: int
    max_output_tokens: int
    cost: Cost | None


@dataclass(frozen=True, slots=True)
class BatchEstimate:
    requests: int
    refused: int  # would be errored at create: bad params or a model not served here
    models: list[ModelEstimate]

    @property
    def input_tokens(self) -> int:
        return sum(m.input_tokens for m in self.models)

    @property
    def max_output_tokens(self) -> int:
        return sum(m.max_output_tokens for m in self.models)


class EstimateService:
    def __init__(
        self,
        router: Router,
        tokens: TokenService,
        prices: Prices,
        max_requests: int,
    ) -> None:
        self._router = router
        self._tokens = tokens
        self._prices = prices
        self._max_requests = max_requests

    async def estimate(self, body: bytes | bytearray) -> BatchEstimate:
        items = parse_create_body(body, max_requests=self._max_requests)
        groups: dict[tuple[str, str], list[tuple[dict[str, object], int]]] = {}
        refused = 0
        for item in items:
            try:
                params = check_params(item.params)
                backend = self._router.route(params.model)
                if backend is None:
                    raise InvalidRequest(f"model: {params.model!r} is not served here")
                self._router.check_max_tokens(backend, params.max_tokens)
            except InvalidRequest:
                refused += 1
                continue
            raw = msgspec.json.decode(item.params)
            counted = {key: raw[key] for key in COUNTED_KEYS if key in raw}
            groups.setdefault((backend, params.model), []).append((counted, params.max_tokens))
        models = []
        for (backend, model), requests in sorted(groups.items()):
            counts = await self._tokens.count_each(backend, [r for r, _ in requests])
            bound = sum(max_tokens for _, max_tokens in requests)
            tokens = TokenUsage(sum(counts), bound)
            cost = self._prices.cost(model, tokens) if self._prices else None
            method = self._tokens.method(backend)
            models.append(
                ModelEstimate(model, backend, method, len(requests), sum(counts), bound, cost)
            )
        return BatchEstimate(len(items), refused, models)
