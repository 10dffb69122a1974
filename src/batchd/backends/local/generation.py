"""The seam between the shared local backend and an engine that generates tokens.

The backend turns Messages params into a ``Job`` (prompt token ids, limits, sampling) and
an engine turns each job into ``Generated`` token ids with the reason it stopped. Which
engine runs the jobs (padded batches of ``transformers``, vLLM's scheduler) is the only
thing that differs between the local kinds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Finish(StrEnum):
    EOS = "eos"  # the model ended its turn
    LENGTH = "length"  # max_tokens reached
    STOP = "stop"  # a stop sequence appeared in the text


@dataclass(frozen=True, slots=True)
class Sampling:
    """How the next token is chosen; temperature 0 is greedy (deterministic)."""

    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True, slots=True)
class Job:
    prompt: list[int]  # token ids of the rendered prompt
    max_tokens: int
    stop: tuple[str, ...] = ()
    sampling: Sampling = Sampling()
    priority: int = 0  # lower runs sooner, where the engine schedules by priority (vLLM's)
    # set when nobody waits for the answer any more: an engine may stop generating it
    abandoned: threading.Event = field(default_factory=threading.Event, compare=False)


@dataclass(frozen=True, slots=True)
class Generated:
    tokens: list[int]  # generated token ids, the end-of-turn token included
    finish: Finish
    cache_read: int = 0  # prompt tokens whose keys and values came from the prefix cache
    cache_write: int = 0  # prompt tokens computed into the prefix cache (for other rows)


class Generator(Protocol):
    """An engine: loaded by ``start``, one ``generate`` per request, any number at once."""

    async def start(self) -> None: ...

    async def generate(self, job: Job) -> Generated: ...

    async def close(self) -> None: ...
