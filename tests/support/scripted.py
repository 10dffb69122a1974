"""A logits processor that makes the tiny model write a given text: its tool calls.

The tiny model's random weights make no tool calls of their own, so the tests and the
benchmark force its output instead of hoping for it: a prompt whose last user turn holds
``SCRIPT:<text>`` gets ``<text>`` then the end-of-turn token, whatever the weights say.
Every other prompt is left alone. Configured as a backend's
``logits_processors = ["tests.support.scripted:scripted"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

MARK = "SCRIPT:"
END = "</s>"  # where the tiny model's chat template ends a turn

Processor = Callable[[Sequence[int], Sequence[int], torch.Tensor], torch.Tensor]


def scripted(tokenizer: Any) -> Processor:
    scripts: dict[tuple[int, ...], list[int] | None] = {}

    def script_of(prompt: Sequence[int]) -> list[int] | None:
        key = tuple(prompt)
        if key not in scripts:
            text: str = tokenizer.decode(list(prompt), skip_special_tokens=False)
            at = text.rfind(MARK)
            if at < 0:
                scripts[key] = None
            else:
                script = text[at + len(MARK) : text.index(END, at)]
                ids: list[int] = tokenizer(script, add_special_tokens=False)["input_ids"]
                scripts[key] = [*ids, tokenizer.eos_token_id]
        return scripts[key]

    def force(
        prompt: Sequence[int], generated: Sequence[int], scores: torch.Tensor
    ) -> torch.Tensor:
        script = script_of(prompt)
        if script is None or len(generated) >= len(script):
            return scores
        forced = torch.full_like(scores, float("-inf"))
        forced[script[len(generated)]] = 0.0
        return forced

    return force
