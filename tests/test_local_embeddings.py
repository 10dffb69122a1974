"""The in-process embeddings engine's pooling (``backends/local/embedding_engine.py``): which
pooling a model directory asks for, and what each computes over right-padded rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from batchd.backends.local.backend import generates
from batchd.backends.local.embedding_engine import (
    Pooling,
    pool,
    pooling_of,
    sentence_transformers_pooling,
)

# two rows of three tokens, width 2; the second row has one token of padding
HIDDEN = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, -4.0]], [[2.0, 2.0], [4.0, 0.0], [9.0, 9.0]]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


@pytest.mark.parametrize(
    ("pooling", "expected"),
    [
        # the first token of each row
        pytest.param(Pooling.CLS, [[1.0, 0.0], [2.0, 2.0]], id="cls"),
        # the mean over the tokens the mask keeps
        pytest.param(Pooling.MEAN, [[3.0, -2 / 3], [3.0, 1.0]], id="mean"),
        # the largest value of each column over the kept tokens
        pytest.param(Pooling.MAX, [[5.0, 2.0], [4.0, 2.0]], id="max"),
        # the last token the mask keeps, not the padding after it
        pytest.param(Pooling.LAST, [[5.0, -4.0], [4.0, 0.0]], id="last"),
    ],
)
def test_pooling_ignores_the_padding(pooling: Pooling, expected: list[list[float]]) -> None:
    pooled = pool(HIDDEN, MASK, pooling).tolist()
    assert pooled == [pytest.approx(row) for row in expected]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # sentence-transformers' own names for the four modes batchd computes
        pytest.param({"pooling_mode_cls_token": True}, Pooling.CLS, id="cls"),
        pytest.param(
            {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False},
            Pooling.MEAN,
            id="mean",
        ),
        pytest.param({"pooling_mode_max_tokens": True}, Pooling.MAX, id="max"),
        pytest.param({"pooling_mode_lasttoken": True}, Pooling.LAST, id="last"),
    ],
)
def test_sentence_transformers_pooling(config: dict[str, Any], expected: Pooling) -> None:
    assert sentence_transformers_pooling(config) is expected


@pytest.mark.parametrize(
    "config",
    [
        # a mode batchd does not compute
        pytest.param({"pooling_mode_weightedmean_tokens": True}, id="weighted-mean"),
        # two modes at once (sentence-transformers concatenates them)
        pytest.param(
            {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}, id="two-modes"
        ),
        # none at all
        pytest.param({"pooling_mode_cls_token": False}, id="none"),
    ],
)
def test_other_sentence_transformers_poolings_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="pooling"):
        sentence_transformers_pooling(config)


def _directory(tmp_path: Path, config: dict[str, Any], pooling: dict[str, Any] | None) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(config))
    if pooling is not None:
        module = {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
        (tmp_path / "modules.json").write_text(json.dumps([module]))
        (tmp_path / "1_Pooling").mkdir()
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return tmp_path


@pytest.mark.parametrize(
    ("config", "pooling", "expected", "generating"),
    [
        # a sentence-transformers directory: its Pooling module decides, and it only embeds
        pytest.param(
            {"architectures": ["BertModel"]},
            {"pooling_mode_cls_token": True},
            Pooling.CLS,
            False,
            id="sentence-transformers",
        ),
        # an encoder: mean pooling
        pytest.param({"architectures": ["BertModel"]}, None, Pooling.MEAN, False, id="encoder"),
        # a decoder: its last token, and it generates too
        pytest.param(
            {"architectures": ["LlamaForCausalLM"]}, None, Pooling.LAST, True, id="decoder"
        ),
        # a config that says it is a decoder
        pytest.param({"is_decoder": True}, None, Pooling.LAST, True, id="is-decoder"),
    ],
)
def test_a_directory_names_its_pooling(
    tmp_path: Path,
    config: dict[str, Any],
    pooling: dict[str, Any] | None,
    expected: Pooling,
    generating: bool,
) -> None:
    directory = _directory(tmp_path, config, pooling)
    assert pooling_of(directory) is expected
    assert generates(directory) is generating
