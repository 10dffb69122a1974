"""kind = "vllm": the engine call's own rules on the CPU; end to end only where vLLM and a GPU
are present (the one place these tests skip, and they say why)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anthropic
import pytest
from anthropic.types.messages import MessageBatchSucceededResult

from batchd.backends.local.backend import vllm_backend
from batchd.backends.local.generation import Finish, Job, Sampling
from batchd.backends.local.vllm_engine import (
    VllmGenerator,
    cached_tokens,
    engine_args,
    finish_of,
    sampling_params,
)
from batchd.config import BackendConfig
from tests.conftest import StartServer, wait_ended
from tests.support.tiny_model import build_tiny_model


@pytest.mark.parametrize(
    ("reason", "stop_reason", "expected"),
    [
        # max_tokens reached
        ("length", None, Finish.LENGTH),
        # a stop string matched: vLLM names it
        ("stop", "###", Finish.STOP),
        # the end-of-turn token (vLLM gives None)
        ("stop", None, Finish.EOS),
        # a stop token id: an end of turn too
        ("stop", 7, Finish.EOS),
    ],
)
def test_finish_of(reason: str, stop_reason: Any, expected: Finish) -> None:
    assert finish_of(reason, stop_reason) is expected


def test_sampling_params_of_a_job() -> None:
    job = Job([1, 2], 16, ("###",), Sampling(0.5, top_p=0.9, top_k=40))
    assert sampling_params(job) == {
        "max_tokens": 16,
        "temperature": 0.5,
        "stop": ["###"],
        "include_stop_str_in_output": True,
        "top_p": 0.9,
        "top_k": 40,
    }


def test_greedy_job_leaves_top_p_and_top_k_unset() -> None:
    params = sampling_params(Job([1], 4, (), Sampling(0.0)))
    assert (params["temperature"], "top_p" in params, "top_k" in params) == (0.0, False, False)


def _no_vllm_gpu() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'batchd[vllm]' on a GPU machine)"
    import torch

    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU and none is present"
    return None


def test_engine_args_keep_prefix_caching_on_and_priority_optional() -> None:
    plain = engine_args("/m", 32, priority=False)
    assert (plain["enable_prefix_caching"], plain["max_num_seqs"]) == (True, 32)
    assert "scheduling_policy" not in plain
    assert engine_args("/m", 32, priority=True)["scheduling_policy"] == "priority"


@pytest.mark.parametrize(
    ("cached", "prompt", "expected"),
    [
        # none cached, or an older vLLM that does not say
        (0, 10, 0),
        (None, 10, 0),
        # part of the prompt cached
        (64, 100, 64),
        # all of it: the last token is computed again
        (100, 100, 99),
    ],
)
def test_cached_tokens(cached: int | None, prompt: int, expected: int) -> None:
    output = SimpleNamespace(num_cached_tokens=cached)
    assert cached_tokens(output, prompt) == expected


@pytest.mark.skipif(_no_vllm_gpu() is not None, reason=str(_no_vllm_gpu()))
@pytest.mark.timeout(300)  # vLLM compiles and profiles the model at start-up
def test_a_batch_runs_on_vllm(start_server: StartServer, tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "model")
    table = {"name": "vllm", "kind": "vllm", "model_path": str(model), "models": ["tiny"]}
    server = start_server(backends=[table])
    with anthropic.Anthropic(base_url=server.url, api_key="sk-test") as client:
        requests: list[dict[str, Any]] = [
            {
                "custom_id": f"r{i}",
                "params": {
                    "model": "tiny",
                    "max_tokens": 8,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": f"the model {i}"}],
                },
            }
            for i in range(64)
        ]
        # temperature is a key this SDK's params no longer name: sent as extra body
        batch = client.messages.batches.create(requests=[], extra_body={"requests": requests})
        wait_ended(client, batch.id, timeout=240)
        results = list(client.messages.batches.results(batch.id))
        messages = requests[0]["params"]["messages"]
        counted = client.messages.count_tokens(model="tiny", messages=messages)
    assert [r.result.type for r in results] == ["succeeded"] * 64
    first = next(r for r in results if r.custom_id == "r0")
    assert isinstance(first.result, MessageBatchSucceededResult)
    usage = first.result.message.usage
    cached = (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)
    assert usage.input_tokens + cached == counted.input_tokens


@pytest.mark.parametrize("send_priority", [False, True])
def test_send_priority_starts_vllm_with_its_priority_scheduler(send_priority: bool) -> None:
    config = BackendConfig(
        name="v", kind="vllm", model_path="/m", models=["m"], send_priority=send_priority
    )
    generator = vllm_backend(config)._make_generator(SimpleNamespace())  # vllm not imported
    assert isinstance(generator, VllmGenerator)
    assert generator.priority_scheduling is send_priority
