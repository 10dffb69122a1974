"""Reading a request file: one request per line, in any of three shapes.

* a full batch request ``{"custom_id": ..., "params": {...}}``;
* bare Messages params ``{"model": ..., "messages": [...]}``: the custom id is made from
  the line number (``line-7``);
* a plain prompt: any line that does not start with ``{`` (a JSON string is unquoted)
  becomes one user message for ``--model``; a line that starts with ``{`` must be JSON.

``--model`` and ``--max-tokens`` fill in params that lack them. Blank lines are skipped.
Each problem names its line.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from batchd.client.errors import BadInput

CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
DEFAULT_MAX_TOKENS = 1024

_decode = msgspec.json.decode
_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class Defaults:
    model: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS


@dataclass(slots=True)
class Requests:
    """The file's requests, each already encoded as one batch request object."""

    encoded: list[bytes] = field(default_factory=list)
    custom_ids: list[str] = field(default_factory=list)
    generated: list[tuple[int, str]] = field(default_factory=list)  # (line, custom_id)


def generated_id(line: int) -> str:
    return f"line-{line}"


def is_openai_file(path: Path) -> bool:
    """Whether the file's first line is an OpenAI batch line (``url`` and ``body``), which
    ``batchd submit`` runs through the OpenAI face (``client/openai_batches.py``)."""
    try:
        with path.open("rb") as lines:
            first = next((line for line in lines if line.strip()), b"")
    except OSError:
        return False  # read_requests says what is wrong with it
    try:
        value = _decode(first)
    except msgspec.DecodeError:
        return False
    return isinstance(value, dict) and "url" in value and "body" in value


def read_requests(path: Path, defaults: Defaults) -> Requests:
    try:
        with path.open("rb") as lines:
            return parse_lines(lines, defaults, str(path))
    except OSError as exc:
        raise BadInput(str(path), 0, exc.strerror or str(exc)) from exc


def parse_lines(lines: Iterable[bytes], defaults: Defaults, source: str = "<input>") -> Requests:
    requests = Requests()
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8").strip()
            if not text:
                continue
            custom_id, params, generated = _parse(text, number, defaults)
        except UnicodeDecodeError:
            raise BadInput(source, number, "not UTF-8 text") from None
        except ValueError as exc:
            raise BadInput(source, number, str(exc)) from None
        if custom_id in seen:
            raise BadInput(
                source, number, f"custom_id {custom_id!r} is already used on line {seen[custom_id]}"
            )
        seen[custom_id] = number
        requests.encoded.append(_encode({"custom_id": custom_id, "params": params}))
        requests.custom_ids.append(custom_id)
        if generated:
            requests.generated.append((number, custom_id))
    if not requests.encoded:
        raise BadInput(source, 0, "no requests: the file is empty")
    return requests


def _parse(text: str, number: int, defaults: Defaults) -> tuple[str, dict[str, Any], bool]:
    """(custom_id, params, whether the id was generated) of one line."""
    if text.startswith('"'):  # a JSON string is a prompt; so is any other text
        with contextlib.suppress(msgspec.DecodeError):
            decoded = _decode(text)
            if isinstance(decoded, str):
                text = decoded
        return generated_id(number), _prompt(text, defaults), True
    if not text.startswith("{"):
        return generated_id(number), _prompt(text, defaults), True
    try:
        value = _decode(text)
    except msgspec.DecodeError as exc:
        raise ValueError(
            f"invalid JSON ({exc}); a plain-text prompt cannot start with {{"
        ) from None
    if "custom_id" in value or "params" in value:
        return (*_full_request(value, defaults), False)
    if "messages" in value:
        return generated_id(number), _filled(value, defaults), True
    raise ValueError(
        'expected {"custom_id": ..., "params": {...}}, Messages params with "messages", '
        "or a plain-text prompt"
    )


def _full_request(value: dict[str, Any], defaults: Defaults) -> tuple[str, dict[str, Any]]:
    extra = sorted(set(value) - {"custom_id", "params"})
    if extra:
        raise ValueError(f"unexpected field {extra[0]!r} beside custom_id and params")
    custom_id, params = value.get("custom_id"), value.get("params")
    if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
        raise ValueError(
            f"custom_id must be 1-64 characters of letters, digits, _ and -; got {custom_id!r}"
        )
    if not isinstance(params, dict):
        raise ValueError('"params" must be a JSON object of Messages params')
    if "model" not in params and defaults.model is None:
        return custom_id, params  # the server records that request as errored
    return custom_id, _filled(params, defaults)


def _filled(params: dict[str, Any], defaults: Defaults) -> dict[str, Any]:
    if "model" not in params:
        if defaults.model is None:
            raise ValueError('no "model" in the params: add one or pass --model')
        params["model"] = defaults.model
    params.setdefault("max_tokens", defaults.max_tokens)
    return params


def _prompt(prompt: str, defaults: Defaults) -> dict[str, Any]:
    if defaults.model is None:
        raise ValueError("a plain-text prompt needs --model (or write the line as JSON params)")
    return {
        "model": defaults.model,
        "max_tokens": defaults.max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }


def chunks(requests: Requests, max_requests: int, max_bytes: int) -> Iterator[list[bytes]]:
    """Split into batches of at most ``max_requests`` requests and about ``max_bytes``."""
    chunk: list[bytes] = []
    size = 0
    for item in requests.encoded:
        if chunk and (len(chunk) >= max_requests or size + len(item) + 1 > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        yield chunk
