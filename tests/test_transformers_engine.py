"""The transformers engine's step loop (continuous batching, the prefix cache) on the tiny
model, in this process: its answers against the library one prompt at a time."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from batchd.backends.local.generation import Finish, Generated, Job, Sampling
from batchd.backends.local.transformers_engine import ContinuousBatcher, LogitsProcessor
from tests.support.tiny_model import build_tiny_model

GREEDY = Sampling(0.0)
PREFIX = list(range(10, 90))  # 80 tokens: long enough to share


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def tiny(request: pytest.FixtureRequest, tiny_dir: Path) -> tuple[Any, Any]:
    """The tiny model under each attention: sdpa takes the step's mask as it is, eager
    has the library build it."""
    tokenizer: Any = AutoTokenizer.from_pretrained(tiny_dir)
    auto: Any = AutoModelForCausalLM  # an untyped factory
    model: Any = auto.from_pretrained(tiny_dir, attn_implementation=request.param)
    return model.eval(), tokenizer


def no_end(tokenizer: Any) -> LogitsProcessor:
    """Rows run to their max_tokens: the end-of-turn token is never picked."""

    def ban(
        _prompt: Sequence[int], _generated: Sequence[int], scores: torch.Tensor
    ) -> torch.Tensor:
        scores[tokenizer.eos_token_id] = float("-inf")
        return scores

    return ban


class Running:
    """A ContinuousBatcher on its own thread, and the order in which its jobs ended."""

    def __init__(self, model: Any, tokenizer: Any, **options: Any) -> None:
        self.batcher = ContinuousBatcher(model, tokenizer, "cpu", **options)
        self.ended: list[int] = []
        self._thread = threading.Thread(target=self.batcher.run)
        self._thread.start()

    def submit(self, jobs: Sequence[Job]) -> list[Future[Generated]]:
        futures = []
        for i, job in enumerate(jobs):
            future = self.batcher.submit(job)
            future.add_done_callback(functools.partial(self._ended, i))
            futures.append(future)
        return futures

    def _ended(self, index: int, _future: Future[Generated]) -> None:
        self.ended.append(index)

    def close(self) -> None:
        self.batcher.close()
        self._thread.join()


@pytest.fixture
def running(tiny: tuple[Any, Any]) -> Iterator[Any]:
    started: list[Running] = []

    def start(**options: Any) -> Running:
        started.append(Running(*tiny, **options))
        return started[-1]

    yield start
    for engine in started:
        engine.close()


def reference(model: Any, prompt: list[int], max_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False)
    generated: list[int] = out[0, len(prompt) :].tolist()
    return generated


def test_answers_are_those_of_one_prompt_at_a_time(running: Any, tiny: tuple[Any, Any]) -> None:
    engine = running(max_batch=4)
    prompts = [[*PREFIX[: 40 + i], *range(100, 100 + 3 * i + 1)] for i in range(10)]
    prompts += [list(range(120, 125 + i)) for i in range(6)]
    jobs = [Job(p, 2 + 3 * (i % 7), (), GREEDY) for i, p in enumerate(prompts)]
    results = [f.result(timeout=60) for f in engine.submit(jobs)]
    for job, result in zip(jobs, results, strict=True):
        expected = reference(tiny[0], job.prompt, job.max_tokens)
        assert result.tokens == expected[: len(result.tokens)]
        assert len(result.tokens) == job.max_tokens or result.finish is Finish.EOS


def test_a_free_row_is_refilled_while_a_long_one_runs(running: Any, tiny: tuple[Any, Any]) -> None:
    engine = running(max_batch=2, logits_processors=[no_end(tiny[1])])
    long = Job(list(range(20, 30)), 60, (), GREEDY)
    shorts = [Job(list(range(30 + i, 40 + i)), 3, (), GREEDY) for i in range(6)]
    futures = engine.submit([long, *shorts])
    assert len(futures[0].result(timeout=60).tokens) == 60
    # in padded groups of two, the long row's group would end before the other shorts began
    assert engine.ended[-1] == 0


def test_a_shared_prefix_is_computed_once_while_cached(running: Any) -> None:
    engine = running(max_batch=4)
    prompts = [[*PREFIX, 300 + i, *range(200, 202 + i)] for i in range(6)]
    first = [f.result(timeout=60) for f in engine.submit([Job(p, 2) for p in prompts[:3]])]
    later = [f.result(timeout=60) for f in engine.submit([Job(p, 2) for p in prompts[3:]])]
    own = sum(len(p) - len(PREFIX) for p in prompts)
    assert engine.batcher.computed_tokens == len(PREFIX) + own
    assert [(r.cache_write, r.cache_read) for r in first + later] == [
        (len(PREFIX), 0),
        *[(0, len(PREFIX))] * 5,
    ]


def test_without_sharing_every_prompt_is_computed(running: Any) -> None:
    engine = running(max_batch=4, share_prefixes=False)
    prompts = [[*PREFIX, *range(200, 202 + i)] for i in range(4)]
    results = [f.result(timeout=60) for f in engine.submit([Job(p, 2) for p in prompts])]
    assert engine.batcher.computed_tokens == sum(map(len, prompts))
    assert all((r.cache_read, r.cache_write) == (0, 0) for r in results)


def test_top_k_one_samples_the_greedy_answer(running: Any) -> None:
    engine = running(max_batch=4)
    prompt = list(range(40, 60))
    greedy, sampled = engine.submit(
        [Job(prompt, 12, (), GREEDY), Job(prompt, 12, (), Sampling(0.9, 0.5, 1))]
    )
    assert greedy.result(timeout=60).tokens == sampled.result(timeout=60).tokens


@pytest.mark.parametrize("after", [0, 2])  # while prefilling; in a step, with rows running
def test_a_failing_step_fails_its_rows_and_the_engine_goes_on(running: Any, after: int) -> None:
    def explode(
        prompt: Sequence[int], generated: Sequence[int], scores: torch.Tensor
    ) -> torch.Tensor:
        if prompt[0] == 7 and len(generated) == after:
            raise RuntimeError("the model broke")
        return scores

    engine = running(max_batch=4, logits_processors=[explode])
    [bad] = engine.submit([Job([7, 8, 9], 4)])
    with pytest.raises(RuntimeError, match="the model broke"):
        bad.result(timeout=60)
    [good] = engine.submit([Job([5, 8, 9], 4)])
    assert good.result(timeout=60).finish in (Finish.LENGTH, Finish.EOS)


def test_an_abandoned_job_ends_at_the_next_step(running: Any, tiny: tuple[Any, Any]) -> None:
    job = Job(list(range(20, 30)), 100_000)
    ban = no_end(tiny[1])

    def caller_leaves(
        prompt: Sequence[int], generated: Sequence[int], scores: torch.Tensor
    ) -> torch.Tensor:
        if len(generated) == 5:  # as the caller's cancellation does, while the row runs
            job.abandoned.set()
        return ban(prompt, generated, scores)

    engine = running(max_batch=2, logits_processors=[caller_leaves])
    [future] = engine.submit([job])
    result = future.result(timeout=60)
    assert (result.finish, len(result.tokens)) == (Finish.LENGTH, 6)


def test_waiting_rows_are_admitted_by_priority(running: Any) -> None:
    released = threading.Event()

    def hold_first(
        prompt: Sequence[int], _generated: Sequence[int], scores: torch.Tensor
    ) -> torch.Tensor:
        if prompt[0] == 7:  # the first job holds the only row until the others wait
            released.wait()
        return scores

    engine = running(max_batch=1, logits_processors=[hold_first])
    first = Job([7, 8, 9], 2, priority=0)
    batch = [Job([5, 8, 9 + i], 2, priority=3) for i in range(2)]
    interactive = Job([5, 8, 20], 2, priority=0)
    futures = engine.submit([first, *batch, interactive])
    released.set()
    for future in futures:
        future.result(timeout=60)
    assert engine.ended == [0, 3, 1, 2]


def test_long_answers_outgrow_the_columns_and_stay_right(
    running: Any, tiny: tuple[Any, Any]
) -> None:
    engine = running(max_batch=3)
    # answers longer than the room kept on the right, prompts longer than the rows before
    jobs = [Job(list(range(20, 26 + 11 * i)), (5, 70, 130)[i % 3], (), GREEDY) for i in range(6)]
    results = [f.result(timeout=60) for f in engine.submit(jobs)]
    for job, result in zip(jobs, results, strict=True):
        expected = reference(tiny[0], job.prompt, job.max_tokens)
        assert result.tokens == expected[: len(result.tokens)]
        assert len(result.tokens) == job.max_tokens or result.finish is Finish.EOS
    assert sum(len(r.tokens) for r in results) > 300  # the answers did run long
