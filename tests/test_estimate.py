"""The rough token estimate used where an upstream cannot count."""

from __future__ import annotations

import json
from typing import Any

import pytest

from batchd.backends.estimate import (
    IMAGE_TOKENS,
    MESSAGE_TOKENS,
    PROMPT_TOKENS,
    TOOLS_TOKENS,
    estimate_input_tokens,
    estimate_tokens,
    tokens_of_length,
)
from batchd.backends.mock import mock_message
from batchd.validation import check_params

PNG_SOURCE = {"type": "base64", "media_type": "image/png", "data": "A" * 4000}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # nothing at all still counts one token
        ((None,), 1),
        # four characters a token, rounded up
        (("abcdefghi",), 3),
        # every value given counts together
        (("abcd", ["efgh"]), 2),
        # roles and text count; block types do not
        (([{"role": "user", "content": [{"type": "text", "text": "abcdefgh"}]}],), 3),
        # an image is a fixed cost, whatever its size
        (([{"type": "image", "source": PNG_SOURCE}],), 1 + IMAGE_TOKENS),
        # an OpenAI image part too
        (([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],), 1001),
        # a base64 payload (a PDF) is bytes, not text: only its title counts
        (
            (
                [
                    {
                        "type": "document",
                        "title": "abcd",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "x"},
                    }
                ],
            ),
            1,
        ),
        # ids and cache_control are not text
        (([{"id": "toolu_0123456789", "cache_control": {"ttl": "5m"}, "name": "abcd"}],), 1),
    ],
)
def test_estimate(values: tuple[Any, ...], expected: int) -> None:
    assert estimate_tokens(*values) == expected


def test_tool_definitions_count_as_json_text() -> None:
    tools = [{"name": "w", "input_schema": {"type": "object"}}]  # 47 characters of JSON
    # (3 + 47) / 4, rounded up; the system prompt's markers, the reply's header, the
    # template's tool instructions
    expected = 13 + MESSAGE_TOKENS + PROMPT_TOKENS + TOOLS_TOKENS
    assert estimate_input_tokens("abc", [], tools) == expected


@pytest.mark.parametrize(
    ("system", "messages", "expected"),
    [
        # one turn: "user" and "Hello there!" (16 characters), its markers, the header
        (None, [{"role": "user", "content": "Hello there!"}], 4 + 3 + 3),
        # a system prompt is one more message
        ("Be brief", [{"role": "user", "content": "Hello there!"}], 6 + 2 * 3 + 3),
        # three turns
        (
            None,
            [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"},
            ],
            7 + 3 * 3 + 3,  # 27 characters of roles and text
        ),
    ],
)
def test_a_request_is_estimated_as_its_rendered_prompt(
    system: str | None, messages: list[dict[str, Any]], expected: int
) -> None:
    assert estimate_input_tokens(system, messages, None) == expected


def test_decoded_messages_are_estimated_as_their_json() -> None:
    body = (
        b'{"model":"m","max_tokens":5,"system":"Be brief",'
        b'"messages":[{"role":"user","content":"Hello there!"}]}'
    )
    params = check_params(body, in_batch=False)
    as_json = json.loads(body)
    assert estimate_input_tokens(params.system, params.messages, None) == estimate_input_tokens(
        as_json["system"], as_json["messages"], None
    )


@pytest.mark.parametrize(
    ("characters", "expected"),
    [
        (0, 1),  # never free
        (4, 1),  # four characters a token
        (5, 2),  # rounded up
        (4_000, 1_000),
    ],
)
def test_tokens_of_length(characters: int, expected: int) -> None:
    assert tokens_of_length(characters) == expected


def test_the_mock_counts_its_input_by_the_same_rule() -> None:
    body = b'{"model":"mock","max_tokens":5,"messages":[{"role":"user","content":"abcdefghi"}]}'
    message = mock_message(check_params(body, in_batch=False), body)
    # "user" and "abcdefghi" (13 characters), the message's markers, the reply's header
    assert message["usage"]["input_tokens"] == 4 + MESSAGE_TOKENS + PROMPT_TOKENS
