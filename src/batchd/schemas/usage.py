"""Usage and cost on the wire (batchd's own routes ``/v1/messages/batches/{id}/usage`` and
``/v1/usage``). Token names follow the Messages API's ``usage``."""

from __future__ import annotations

import msgspec

from batchd.domain import DailyUsage, TokenUsage
from batchd.schemas.batches import MessageBatchRequestCounts
from batchd.usecases.estimate import BatchEstimate
from batchd.usecases.usage import BatchUsage, Cost


class CostOut(msgspec.Struct, forbid_unknown_fields=True):
    currency: str
    batch: float  # at the batch price
    interactive: float  # what the same tokens cost interactively
    unpriced_models: list[str]  # in the figures, but in no price table


class ModelUsageOut(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cost: CostOut | None


class MessageBatchUsage(
    msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="message_batch_usage"
):
    id: str
    request_counts: MessageBatchRequestCounts
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    models: list[ModelUsageOut]
    cost: CostOut | None  # null: no price table configured


class DailyUsageOut(msgspec.Struct, forbid_unknown_fields=True):
    day: str
    workspace: str
    model: str  # "" for requests that never ran (canceled, expired, refused at create)
    requests: dict[str, int]  # by result type
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cost: CostOut | None


class UsageList(msgspec.Struct, forbid_unknown_fields=True):
    data: list[DailyUsageOut]
    currency: str | None  # null: no price table configured


def cost_to_wire(cost: Cost | None, currency: str) -> CostOut | None:
    if cost is None:
        return None
    return CostOut(currency, round(cost.batch, 6), round(cost.interactive, 6), list(cost.unpriced))


def _tokens(tokens: TokenUsage) -> tuple[int, int, int]:
    return tokens.input_tokens, tokens.output_tokens, tokens.cache_read_tokens


def batch_usage_to_wire(
    usage: BatchUsage, model_costs: list[Cost | None], currency: str
) -> MessageBatchUsage:
    counts = usage.batch.counts
    models = [
        ModelUsageOut(m.model, m.requests, *_tokens(m.tokens), cost_to_wire(cost, currency))
        for m, cost in zip(usage.models, model_costs, strict=True)
    ]
    return MessageBatchUsage(
        usage.batch.id,
        MessageBatchRequestCounts(
            counts.processing, counts.succeeded, counts.errored, counts.canceled, counts.expired
        ),
        *_tokens(usage.tokens),
        models,
        cost_to_wire(usage.cost, currency),
    )


def daily_to_wire(day: DailyUsage, cost: Cost | None, currency: str) -> DailyUsageOut:
    return DailyUsageOut(
        day.day, day.workspace, day.model, day.requests, *_tokens(day.tokens),
        cost_to_wire(cost, currency),
    )  # fmt: skip


class ModelEstimateOut(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    backend: str
    method: str  # tokenizer (exact), upstream, or estimate (about 4 characters a token)
    requests: int
    input_tokens: int
    max_output_tokens: int
    cost: CostOut | None  # at max_output_tokens


class MessageBatchEstimate(
    msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="message_batch_estimate"
):
    requests: int
    refused: int  # would be errored at create
    input_tokens: int
    max_output_tokens: int
    models: list[ModelEstimateOut]
    cost: CostOut | None


def estimate_to_wire(estimate: BatchEstimate, currency: str, priced: bool) -> MessageBatchEstimate:
    models = [
        ModelEstimateOut(
            m.model,
            m.backend,
            m.method,
            m.requests,
            m.input_tokens,
            m.max_output_tokens,
            cost_to_wire(m.cost, currency),
        )
        for m in estimate.models
    ]
    total: Cost | None = None
    if priced:
        total = Cost(0.0, 0.0)
        for m in estimate.models:
            total += m.cost or Cost(0.0, 0.0)
    return MessageBatchEstimate(
        estimate.requests, estimate.refused, estimate.input_tokens, estimate.max_output_tokens,
        models, cost_to_wire(total, currency),
    )  # fmt: skip
