"""The realistic batch of ../shared/PERFORMANCE.md: mixed prompts, turns, tools, sampling."""

from __future__ import annotations

import random
from typing import Any

MODELS = ["claude-bench-a", "claude-bench-b", "claude-bench-c", "claude-bench-d"]
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "one",
    "all",
    "we",
    "can",
    "their",
    "has",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "model",
    "batch",
    "token",
    "request",
    "answer",
    "summary",
    "label",
    "document",
    "evaluation",
    "dataset",
    "careful",
    "reason",
    "short",
    "long",
    "first",
    "second",
    "result",
    "value",
]


def _text(rng: random.Random, low: int, high: int) -> str:
    size = rng.randint(low, high)
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


def _tool(rng: random.Random, i: int) -> dict[str, Any]:
    return {
        "name": f"tool_{i}",
        "description": _text(rng, 40, 120),
        "input_schema": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "what to look up"},
                "limit": {"type": "integer", "minimum": 1},
            },
            "required": ["query"],
        },
    }


def params(rng: random.Random) -> dict[str, Any]:
    p: dict[str, Any] = {"model": rng.choice(MODELS), "max_tokens": rng.choice([64, 256, 1024])}
    user: Any = _text(rng, 500, 1500)
    if rng.random() < 0.2:
        user = [{"type": "text", "text": user}]
    if rng.random() < 0.15:
        p["messages"] = [
            {"role": "user", "content": _text(rng, 100, 400)},
            {"role": "assistant", "content": _text(rng, 100, 400)},
            {"role": "user", "content": user},
        ]
    else:
        p["messages"] = [{"role": "user", "content": user}]
    if rng.random() < 0.5:
        system = _text(rng, 100, 600)
        if rng.random() < 1 / 3:
            block: dict[str, Any] = {"type": "text", "text": system}
            if rng.random() < 0.5:
                block["cache_control"] = {"type": "ephemeral"}
            p["system"] = [block]
        else:
            p["system"] = system
    if rng.random() < 0.05:
        p["tools"] = [_tool(rng, i) for i in range(rng.randint(1, 3))]
        if rng.random() < 0.5:
            p["tool_choice"] = {"type": "auto"}
    if rng.random() < 0.3:
        p["temperature"] = round(rng.random(), 2)
    if rng.random() < 0.1:
        p["stop_sequences"] = ["\n\nHuman:", "END"]
    if rng.random() < 0.1:
        p["metadata"] = {"user_id": f"user-{rng.randint(1, 10_000)}"}
    return p


def requests(n: int, seed: int = 42) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"custom_id": f"req-{i}", "params": params(rng)} for i in range(n)]
