"""OpenAI's ``/v1/embeddings`` wire, for the backends that compute embeddings themselves
(the mock, the local engines): the request's inputs read and checked, the answer built.

    input              a string, a list of strings, a list of token ids, or a list of lists
                       of token ids; at most ``MAX_INPUTS``, none empty
    encoding_format    "float" (the API's default) or "base64": little-endian float32
                       bytes, base64-encoded (what the ``openai`` SDK asks for by default and
                       decodes for its caller)
    dimensions         a positive int: the vector cut to that many values, normalised again
    user               accepted, unused

An ``openai``-kind backend forwards the body as it came and checks none of this: its
upstream does.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from batchd.errors import InvalidRequest

MAX_INPUTS = 2048  # OpenAI's limit on one request's inputs

Input = str | list[int]  # a text, or the token ids of one


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    model: str
    inputs: list[Input]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


def embeddings_request(body: Mapping[str, Any]) -> EmbeddingsRequest:
    """The checked request; InvalidRequest naming the field at fault."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required (a string)")
    encoding = body.get("encoding_format", "float")
    if encoding is None:
        encoding = "float"
    if encoding not in ("float", "base64"):
        raise InvalidRequest(f"encoding_format: must be 'float' or 'base64', not {encoding!r}")
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise InvalidRequest("dimensions: must be a positive integer")
    if "input" not in body:
        raise InvalidRequest("input: Field required")
    return EmbeddingsRequest(model, _inputs(body["input"]), encoding, dimensions)


def _inputs(value: Any) -> list[Input]:
    if isinstance(value, str):
        inputs: list[Input] = [value]
    elif isinstance(value, list) and value and all(_is_token(t) for t in value):
        inputs = [list(value)]
    elif isinstance(value, list) and value:
        inputs = []
        for i, item in enumerate(value):
            if isinstance(item, str) or (
                isinstance(item, list) and all(_is_token(t) for t in item)
            ):
                inputs.append(item)
            else:
                raise InvalidRequest(
                    f"input.{i}: must be a string or a list of token ids (integers)"
                )
    else:
        raise InvalidRequest("input: must be a string, a non-empty list of strings, or token ids")
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequest(f"input: at most {MAX_INPUTS} inputs per request, not {len(inputs)}")
    for i, item in enumerate(inputs):
        if not item:
            raise InvalidRequest(f"input.{i}: must not be empty")
    return inputs


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def shaped(vector: Sequence[float], dimensions: int | None) -> list[float]:
    """``vector`` cut to ``dimensions`` values (when given) and scaled to unit length."""
    values = list(vector[:dimensions] if dimensions else vector)
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values] if norm else values


def encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def embeddings_response(
    request: EmbeddingsRequest, vectors: Sequence[Sequence[float]], *, prompt_tokens: int
) -> dict[str, Any]:
    """The ``CreateEmbeddingResponse`` for ``request``: one vector per input, in order."""
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": i,
                "embedding": encoded(shaped(vector, request.dimensions), request.encoding_format),
            }
            for i, vector in enumerate(vectors)
        ],
        "model": request.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
