"""Anthropic Messages <-> OpenAI chat.completions: table tests of the pure translation.

Every outgoing body must validate as the ``openai`` SDK's own request type, and every
incoming fixture must parse as its ``ChatCompletion``; every Message we make must parse
as the ``anthropic`` SDK's ``Message``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from openai.types.chat import ChatCompletion
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import TypeAdapter

from batchd.backends.openai_translate import (
    chat_request,
    error_from_openai,
    message_from_body,
    message_from_completion,
)
from batchd.errors import InvalidRequest, UpstreamError
from tests.support.pdf import pdf_base64

SERVED = "served-model"
EXTENSIONS = {"top_k"}  # fields we send that the OpenAI types do not declare (vLLM/SGLang do)
_OPENAI_BODY = TypeAdapter(CompletionCreateParamsNonStreaming)


def _forced(value: Any) -> Any:
    """A validated TypedDict with its lazy ``Iterable`` fields iterated (and so validated)."""
    if isinstance(value, dict):
        return {k: _forced(v) for k, v in value.items()}
    if isinstance(value, str | bytes | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple | Iterator) or hasattr(value, "__next__"):
        return [_forced(v) for v in value]
    return value


def assert_valid_openai_body(body: dict[str, Any]) -> None:
    """The body validates as the SDK's request type and nothing in it was dropped or coerced."""
    validated = _forced(_OPENAI_BODY.validate_python(body))
    assert validated == {k: v for k, v in body.items() if k not in EXTENSIONS}


def params(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "claude-ish", "max_tokens": 64, "messages": list(messages), **fields}


def body(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": SERVED, "messages": list(messages), "max_tokens": 64, **fields}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def text(value: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": value, **extra}


def tool_use(tool_id: str, name: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": name, "input": tool_input}


def tool_result(tool_id: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": content, **extra}


def call(tool_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": tool_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_msg(tool_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": tool_id, "content": content}


WEATHER = {
    "name": "weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
WEATHER_FN: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": WEATHER["input_schema"],
        "description": "Weather in a city",
    },
}
PNG = "iVBORw0KGgo="
ONE_PAGE_PDF = pdf_base64("Quarterly revenue rose 12 percent")
TWO_PAGE_PDF = pdf_base64("First page text", "Second page text")

REQUESTS = [
    # a plain string turn
    pytest.param(params(user("Hi")), body(user("Hi")), id="string-content"),
    # a string system prompt becomes the first message
    pytest.param(
        params(user("Hi"), system="Be brief."),
        body({"role": "system", "content": "Be brief."}, user("Hi")),
        id="system-string",
    ),
    # system text blocks are joined; their cache_control is dropped
    pytest.param(
        params(user("Hi"), system=[text("One."), text("Two.", cache_control={"type": "x"})]),
        body({"role": "system", "content": "One.\n\nTwo."}, user("Hi")),
        id="system-blocks",
    ),
    # an empty system prompt sends no system message
    pytest.param(params(user("Hi"), system=""), body(user("Hi")), id="system-empty"),
    # a 2.x role "system" message in the list
    pytest.param(
        params({"role": "system", "content": [text("Rules")]}, user("Hi")),
        body({"role": "system", "content": "Rules"}, user("Hi")),
        id="system-role-message",
    ),
    # one text block is sent as a plain string
    pytest.param(params(user([text("Hi")])), body(user("Hi")), id="one-text-block"),
    # several text blocks stay parts; cache_control and citations are dropped
    pytest.param(
        params(user([text("a", cache_control={"type": "ephemeral"}), text("b", citations=[])])),
        body(user([text("a"), text("b")])),
        id="text-blocks",
    ),
    # a base64 image becomes a data URL
    pytest.param(
        params(
            user(
                [
                    text("What is this?"),
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                ]
            )
        ),
        body(
            user(
                [
                    text("What is this?"),
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ]
            )
        ),
        id="image-base64",
    ),
    # a url image is passed by url
    pytest.param(
        params(user([{"type": "image", "source": {"type": "url", "url": "https://x/cat.jpg"}}])),
        body(user([{"type": "image_url", "image_url": {"url": "https://x/cat.jpg"}}])),
        id="image-url",
    ),
    # a text document becomes a text part
    pytest.param(
        params(
            user(
                [
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "Notes"},
                    },
                    text("Summarise"),
                ]
            )
        ),
        body(user([text("Notes"), text("Summarise")])),
        id="document-text",
    ),
    # a titled text document keeps its title
    pytest.param(
        params(
            user(
                [
                    {
                        "type": "document",
                        "title": "memo",
                        "source": {"type": "text", "media_type": "text/plain", "data": "Body"},
                    }
                ]
            )
        ),
        body(user("[document 'memo']\nBody")),
        id="document-text-titled",
    ),
    # a base64 PDF is sent as its extracted text, marked as such
    pytest.param(
        params(
            user(
                [
                    {
                        "type": "document",
                        "title": "Q3",
                        "source": {
                            "type": "base64",
                            "media_type": "application/pdf",
                            "data": ONE_PAGE_PDF,
                        },
                    },
                    text("Summarise"),
                ]
            )
        ),
        body(
            user(
                [
                    text(
                        "[PDF document 'Q3', text extracted by batchd]\n"
                        "Quarterly revenue rose 12 percent"
                    ),
                    text("Summarise"),
                ]
            )
        ),
        id="document-pdf-titled",
    ),
    # an untitled PDF: pages joined by a blank line
    pytest.param(
        params(
            user(
                [
                    {
                        "type": "document",
                        "source": {
                            "type": "base64",
                            "media_type": "application/pdf",
                            "data": TWO_PAGE_PDF,
                        },
                    }
                ]
            )
        ),
        body(user("[PDF document, text extracted by batchd]\nFirst page text\n\nSecond page text")),
        id="document-pdf-untitled",
    ),
    # an assistant string turn
    pytest.param(
        params(user("Hi"), assistant("Hello"), user("Bye")),
        body(user("Hi"), assistant("Hello"), user("Bye")),
        id="assistant-string",
    ),
    # assistant text and tool_use: content plus tool_calls with JSON-string arguments
    pytest.param(
        params(
            user("Weather?"),
            assistant([text("Checking."), tool_use("toolu_1", "weather", {"city": "Oslo"})]),
        ),
        body(
            user("Weather?"),
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [call("toolu_1", "weather", '{"city":"Oslo"}')],
            },
        ),
        id="assistant-text-and-tool-use",
    ),
    # assistant tool_use alone: content is null
    pytest.param(
        params(user("Weather?"), assistant([tool_use("toolu_1", "weather", {})])),
        body(
            user("Weather?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [call("toolu_1", "weather", "{}")],
            },
        ),
        id="assistant-tool-use-only",
    ),
    # thinking blocks are dropped from assistant turns
    pytest.param(
        params(
            user("Hi"),
            assistant(
                [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "xx"},
                    text("Hello"),
                ]
            ),
        ),
        body(user("Hi"), assistant("Hello")),
        id="assistant-thinking-dropped",
    ),
    # a string tool_result becomes a tool message
    pytest.param(
        params(user([tool_result("toolu_1", "12 C")])),
        body(tool_msg("toolu_1", "12 C")),
        id="tool-result-string",
    ),
    # tool_result blocks are flattened to text
    pytest.param(
        params(user([tool_result("toolu_1", [text("12 C"), text("windy")])])),
        body(tool_msg("toolu_1", "12 C\n\nwindy")),
        id="tool-result-blocks",
    ),
    # is_error is marked in the content
    pytest.param(
        params(user([tool_result("toolu_1", "no such city", is_error=True)])),
        body(tool_msg("toolu_1", "[tool error] no such city")),
        id="tool-result-error",
    ),
    # tool messages come before the user's other content, whatever the block order
    pytest.param(
        params(user([text("And tomorrow?"), tool_result("toolu_1", "12 C")])),
        body(tool_msg("toolu_1", "12 C"), user("And tomorrow?")),
        id="tool-result-before-text",
    ),
    # several tool results keep their order
    pytest.param(
        params(user([tool_result("toolu_a", "1"), tool_result("toolu_b", "2")])),
        body(tool_msg("toolu_a", "1"), tool_msg("toolu_b", "2")),
        id="tool-results-in-order",
    ),
    # a whole multi-turn tool conversation
    pytest.param(
        params(
            user("Weather in Oslo and Rome?"),
            assistant(
                [
                    tool_use("toolu_o", "weather", {"city": "Oslo"}),
                    tool_use("toolu_r", "weather", {"city": "Rome"}),
                ]
            ),
            user([tool_result("toolu_o", "3 C"), tool_result("toolu_r", "19 C")]),
            assistant("Oslo 3 C, Rome 19 C."),
            user("Thanks"),
            tools=[WEATHER],
        ),
        body(
            user("Weather in Oslo and Rome?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    call("toolu_o", "weather", '{"city":"Oslo"}'),
                    call("toolu_r", "weather", '{"city":"Rome"}'),
                ],
            },
            tool_msg("toolu_o", "3 C"),
            tool_msg("toolu_r", "19 C"),
            assistant("Oslo 3 C, Rome 19 C."),
            user("Thanks"),
            tools=[WEATHER_FN],
        ),
        id="multi-turn-tool-use",
    ),
    # tools become function tools; strict is kept
    pytest.param(
        params(user("Hi"), tools=[{**WEATHER, "strict": True}]),
        body(
            user("Hi"),
            tools=[{"type": "function", "function": {**WEATHER_FN["function"], "strict": True}}],
        ),
        id="tools",
    ),
    # tool_choice auto
    pytest.param(
        params(user("Hi"), tools=[WEATHER], tool_choice={"type": "auto"}),
        body(user("Hi"), tools=[WEATHER_FN], tool_choice="auto"),
        id="tool-choice-auto",
    ),
    # tool_choice any -> required
    pytest.param(
        params(user("Hi"), tools=[WEATHER], tool_choice={"type": "any"}),
        body(user("Hi"), tools=[WEATHER_FN], tool_choice="required"),
        id="tool-choice-any",
    ),
    # tool_choice tool -> a named function
    pytest.param(
        params(user("Hi"), tools=[WEATHER], tool_choice={"type": "tool", "name": "weather"}),
        body(
            user("Hi"),
            tools=[WEATHER_FN],
            tool_choice={"type": "function", "function": {"name": "weather"}},
        ),
        id="tool-choice-tool",
    ),
    # tool_choice none
    pytest.param(
        params(user("Hi"), tools=[WEATHER], tool_choice={"type": "none"}),
        body(user("Hi"), tools=[WEATHER_FN], tool_choice="none"),
        id="tool-choice-none",
    ),
    # disable_parallel_tool_use -> parallel_tool_calls false
    pytest.param(
        params(
            user("Hi"),
            tools=[WEATHER],
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        ),
        body(user("Hi"), tools=[WEATHER_FN], tool_choice="auto", parallel_tool_calls=False),
        id="tool-choice-no-parallel",
    ),
    # tool_choice without tools is not sent (OpenAI servers reject it)
    pytest.param(
        params(user("Hi"), tool_choice={"type": "auto"}), body(user("Hi")), id="choice-no-tools"
    ),
    # stop_sequences -> stop
    pytest.param(
        params(user("Hi"), stop_sequences=["END", "###"]),
        body(user("Hi"), stop=["END", "###"]),
        id="stop-sequences",
    ),
    # sampling parameters; top_k is a vLLM/SGLang extension
    pytest.param(
        params(user("Hi"), temperature=0.2, top_p=0.9, top_k=40),
        body(user("Hi"), temperature=0.2, top_p=0.9, top_k=40),
        id="sampling",
    ),
    # metadata.user_id -> user
    pytest.param(
        params(user("Hi"), metadata={"user_id": "u-42"}),
        body(user("Hi"), user="u-42"),
        id="metadata-user",
    ),
    # Anthropic-only keys are dropped
    pytest.param(
        params(
            user("Hi"),
            thinking={"type": "enabled", "budget_tokens": 1024},
            service_tier="auto",
            cache_control={"type": "ephemeral"},
            metadata={"user_id": None},
        ),
        body(user("Hi")),
        id="anthropic-only-dropped",
    ),
]


@pytest.mark.parametrize(("anthropic_params", "expected"), REQUESTS)
def test_request_translation(anthropic_params: dict[str, Any], expected: dict[str, Any]) -> None:
    translated = chat_request(anthropic_params, model=SERVED)
    assert translated == expected
    assert_valid_openai_body(translated)


def document(source: dict[str, Any]) -> dict[str, Any]:
    return {"type": "document", "source": source}


def pdf(data: str) -> dict[str, Any]:
    return document({"type": "base64", "media_type": "application/pdf", "data": data})


REFUSED = [
    # a document by url cannot be fetched for the upstream
    pytest.param(
        params(user([document({"type": "url", "url": "https://x/a.pdf"})])),
        "messages.0.content.0.source: a document with source 'url'",
        id="document-url",
    ),
    # a Files API document
    pytest.param(
        params(user([document({"type": "file", "file_id": "file_1"})])),
        "source 'file'",
        id="document-file",
    ),
    # a document made of content blocks
    pytest.param(
        params(user([document({"type": "content", "content": [text("x")]})])),
        "source 'content'",
        id="document-content",
    ),
    # a Files API image
    pytest.param(
        params(user([{"type": "image", "source": {"type": "file", "file_id": "file_1"}}])),
        "image source 'file'",
        id="image-file",
    ),
    # base64 that does not decode
    pytest.param(params(user([pdf("%%%not base64")])), "not valid base64", id="pdf-bad-base64"),
    # bytes that are not a PDF
    pytest.param(params(user([pdf("aGVsbG8gd29ybGQ=")])), "could not be read", id="pdf-garbage"),
    # a PDF with no text layer
    pytest.param(params(user([pdf(pdf_base64(""))])), "no extractable text", id="pdf-no-text"),
    # images inside a tool result have nowhere to go
    pytest.param(
        params(
            user(
                [
                    tool_result(
                        "toolu_1",
                        [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}],
                    )
                ]
            )
        ),
        "messages.0.content.0.content.0: an OpenAI-compatible backend takes images only",
        id="tool-result-image",
    ),
    # a server-side built-in tool
    pytest.param(
        params(user("Hi"), tools=[{"type": "web_search_20250305", "name": "web_search"}]),
        "tools.0.type: the built-in tool 'web_search_20250305'",
        id="builtin-tool",
    ),
    # a custom tool without input_schema
    pytest.param(
        params(user("Hi"), tools=[{"name": "f"}]), "tools.0.input_schema", id="tool-no-schema"
    ),
    # block types only Anthropic's own servers understand
    pytest.param(
        params(user([{"type": "search_result", "source": "s", "title": "t", "content": []}])),
        "content block 'search_result'",
        id="search-result-block",
    ),
    # an unknown tool_choice
    pytest.param(
        params(user("Hi"), tools=[WEATHER], tool_choice={"type": "sometimes"}),
        "tool_choice: unsupported",
        id="tool-choice-unknown",
    ),
]


@pytest.mark.parametrize(("anthropic_params", "message"), REFUSED)
def test_untranslatable_requests_are_invalid(
    anthropic_params: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat_request(anthropic_params, model=SERVED)
    assert message in info.value.message


def completion(
    message: dict[str, Any],
    finish_reason: str = "stop",
    *,
    usage: dict[str, Any] | None = None,
    completion_id: str = "chatcmpl-abc123",
    **choice: Any,
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": SERVED,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, **choice}],
        "usage": usage or {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }


def reply(content: str | None, *calls: dict[str, Any], **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, **extra}
    if calls:
        message["tool_calls"] = list(calls)
    return message


def message(
    content: list[dict[str, Any]],
    stop_reason: str = "end_turn",
    stop_sequence: str | None = None,
    *,
    message_id: str = "msg_abc123",
    input_tokens: int = 10,
    output_tokens: int = 3,
    cache_read: int = 0,
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": "claude-ish",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cache_read,
        },
    }


RESPONSES = [
    # text that ended naturally
    pytest.param(completion(reply("Hello!")), (), message([text("Hello!")]), id="text-stop"),
    # an empty answer has no text block
    pytest.param(completion(reply("")), (), message([]), id="empty-text"),
    # cut at max_tokens
    pytest.param(
        completion(reply("Hello wor"), "length"),
        (),
        message([text("Hello wor")], "max_tokens"),
        id="length",
    ),
    # a tool call: parsed input, toolu_ id
    pytest.param(
        completion(reply(None, call("call_1", "weather", '{"city": "Oslo"}')), "tool_calls"),
        (),
        message([tool_use("toolu_call_1", "weather", {"city": "Oslo"})], "tool_use"),
        id="tool-call",
    ),
    # text before two tool calls
    pytest.param(
        completion(
            reply(
                "Checking both.",
                call("call_1", "weather", '{"city":"Oslo"}'),
                call("call_2", "weather", '{"city":"Rome"}'),
            ),
            "tool_calls",
        ),
        (),
        message(
            [
                text("Checking both."),
                tool_use("toolu_call_1", "weather", {"city": "Oslo"}),
                tool_use("toolu_call_2", "weather", {"city": "Rome"}),
            ],
            "tool_use",
        ),
        id="text-and-tool-calls",
    ),
    # Ollama: tool calls with finish_reason "stop" still end in tool_use
    pytest.param(
        completion(reply("", call("call_9", "weather", "{}")), "stop"),
        (),
        message([tool_use("toolu_call_9", "weather", {})], "tool_use"),
        id="tool-call-finish-stop",
    ),
    # empty arguments mean no input
    pytest.param(
        completion(reply(None, call("call_1", "now", "")), "tool_calls"),
        (),
        message([tool_use("toolu_call_1", "now", {})], "tool_use"),
        id="tool-call-empty-arguments",
    ),
    # vLLM ids with odd characters; an id that already is a toolu_ id is kept
    pytest.param(
        completion(
            reply(None, call("chatcmpl-tool-a.b", "f", "{}"), call("toolu_x", "f", "{}")),
            "tool_calls",
        ),
        (),
        message(
            [tool_use("toolu_chatcmpl-tool-a_b", "f", {}), tool_use("toolu_x", "f", {})],
            "tool_use",
        ),
        id="tool-call-ids",
    ),
    # vLLM names the stop string in stop_reason
    pytest.param(
        completion(reply("Count: 1, 2"), stop_reason="END"),
        ("END",),
        message([text("Count: 1, 2")], "stop_sequence", "END"),
        id="vllm-stop-string",
    ),
    # transformers serve keeps the stop string in the text and finishes a plain "stop"
    pytest.param(
        completion(reply("Count: 1, 2END")),
        ("###", "END"),
        message([text("Count: 1, 2")], "stop_sequence", "END"),
        id="kept-stop-string",
    ),
    # of two stop strings in the text, the one whose end came first ended it
    pytest.param(
        completion(reply("a b STOP c END")),
        ("END", "STOP"),
        message([text("a b ")], "stop_sequence", "STOP"),
        id="kept-stop-string-first",
    ),
    # two ending at the same place: the longer one matched
    pytest.param(
        completion(reply("one, two.")),
        (".", "two."),
        message([text("one, ")], "stop_sequence", "two."),
        id="kept-stop-strings-ending-together",
    ),
    # a stop string cut off without being named: nothing tells it from a natural end
    pytest.param(
        completion(reply("Count: 1, 2")),
        ("END",),
        message([text("Count: 1, 2")]),
        id="stop-string-cut-unnamed",
    ),
    # vLLM asked to keep the string (include_stop_str_in_output): cut all the same
    pytest.param(
        completion(reply("Count: 1, 2END"), stop_reason="END"),
        ("END",),
        message([text("Count: 1, 2")], "stop_sequence", "END"),
        id="vllm-kept-stop-string",
    ),
    # the whole text is the stop string: no text block
    pytest.param(
        completion(reply("END")),
        ("END",),
        message([], "stop_sequence", "END"),
        id="kept-stop-string-alone",
    ),
    # a stop token id (an int) is a natural end
    pytest.param(
        completion(reply("Done."), stop_reason=128009),
        ("END",),
        message([text("Done.")]),
        id="vllm-stop-token",
    ),
    # a stop string the client did not ask for is not a stop_sequence
    pytest.param(
        completion(reply("Done."), stop_reason="<|eot|>"),
        ("END",),
        message([text("Done.")]),
        id="vllm-foreign-stop-string",
    ),
    # content_filter -> refusal
    pytest.param(
        completion(reply(""), "content_filter"),
        (),
        message([], "refusal"),
        id="content-filter",
    ),
    # an OpenAI refusal: its text, stop_reason refusal
    pytest.param(
        completion(reply(None, refusal="I can't help with that.")),
        (),
        message([text("I can't help with that.")], "refusal"),
        id="refusal",
    ),
    # cached prompt tokens are cache reads, not fresh input
    pytest.param(
        completion(
            reply("Hi"),
            usage={
                "prompt_tokens": 100,
                "completion_tokens": 2,
                "total_tokens": 102,
                "prompt_tokens_details": {"cached_tokens": 64},
            },
        ),
        (),
        message([text("Hi")], input_tokens=36, output_tokens=2, cache_read=64),
        id="cached-tokens",
    ),
    # an id without the chatcmpl- prefix
    pytest.param(
        completion(reply("Hi"), completion_id="cmpl/77"),
        (),
        message([text("Hi")], message_id="msg_cmpl_77"),
        id="other-id",
    ),
]


@pytest.mark.parametrize(("fixture", "stops", "expected"), RESPONSES)
def test_response_translation(
    fixture: dict[str, Any], stops: tuple[str, ...], expected: dict[str, Any]
) -> None:
    ChatCompletion.model_validate(fixture)
    translated = message_from_completion(fixture, model="claude-ish", stop_sequences=stops)
    assert translated == expected
    anthropic.types.Message.model_validate(translated)


def test_missing_usage_counts_zero() -> None:
    fixture = completion(reply("Hi"))
    del fixture["usage"]
    translated = message_from_completion(fixture, model="m")
    assert translated["usage"]["input_tokens"] == translated["usage"]["output_tokens"] == 0


BROKEN = [
    # arguments that are not JSON: asking again will not help
    pytest.param(
        b'{"choices":[{"message":{"tool_calls":[{"id":"c","function":'
        b'{"name":"f","arguments":"{city: Oslo"}}]},"finish_reason":"tool_calls"}]}',
        False,
        "arguments that are not a JSON object",
        id="arguments-not-json",
    ),
    # arguments that are JSON but not an object
    pytest.param(
        b'{"choices":[{"message":{"tool_calls":[{"id":"c","function":'
        b'{"name":"f","arguments":"[1, 2]"}}]},"finish_reason":"tool_calls"}]}',
        False,
        "arguments that are not a JSON object",
        id="arguments-array",
    ),
    # a tool call with no function name
    pytest.param(
        b'{"choices":[{"message":{"tool_calls":[{"id":"c","function":{}}]}}]}',
        False,
        "without a function name",
        id="tool-call-no-name",
    ),
    # no choices: a broken answer, worth another try
    pytest.param(b'{"id":"x","choices":[]}', True, "not a chat completion", id="no-choices"),
    # a body cut short
    pytest.param(b'{"id":"x","choi', True, "not JSON", id="not-json"),
]


@pytest.mark.parametrize(("raw", "retryable", "text_in_message"), BROKEN)
def test_unusable_completions_are_upstream_errors(
    raw: bytes, retryable: bool, text_in_message: str
) -> None:
    with pytest.raises(UpstreamError) as info:
        message_from_body(raw, model="m")
    assert (info.value.upstream_status, info.value.error_type) == (502, "api_error")
    assert info.value.retryable is retryable
    assert text_in_message in info.value.message


def test_a_tool_call_round_trips_with_its_id() -> None:
    first = message_from_completion(
        completion(reply(None, call("call_7", "weather", '{"city":"Oslo"}')), "tool_calls"),
        model="claude-ish",
    )
    [block] = first["content"]
    follow_up = params(
        user("Weather in Oslo?"),
        assistant(first["content"]),
        user([tool_result(block["id"], "3 C")]),
        tools=[WEATHER],
    )
    sent = chat_request(follow_up, model=SERVED)
    assert_valid_openai_body(sent)
    assert sent["messages"][1]["tool_calls"][0]["id"] == block["id"]
    assert sent["messages"][2] == tool_msg(block["id"], "3 C")


def openai_error(message: str) -> bytes:
    return b'{"error":{"message":"' + message.encode() + b'","type":"x","param":null,"code":null}}'


ERRORS = [
    # the OpenAI envelope, status by status
    pytest.param(400, openai_error("bad"), {}, "invalid_request_error", False, "bad", id="400"),
    # batchd's own upstream key refused: the server's fault, never the client's key
    pytest.param(401, openai_error("key"), {}, "api_error", False, "credentials", id="401"),
    pytest.param(403, openai_error("no"), {}, "api_error", False, "credentials", id="403"),
    pytest.param(404, openai_error("model?"), {}, "not_found_error", False, "model?", id="404"),
    pytest.param(408, b"", {}, "timeout_error", True, "upstream answered HTTP 408", id="408"),
    pytest.param(413, openai_error("big"), {}, "request_too_large", False, "big", id="413"),
    # FastAPI's validation answer (vLLM before it wraps errors)
    pytest.param(
        422,
        b'{"detail":"max_tokens: bad"}',
        {},
        "invalid_request_error",
        False,
        "max_tokens: bad",
        id="422-detail",
    ),
    # 429 with the delay the server asks for
    pytest.param(
        429,
        openai_error("slow down"),
        {"retry-after": "2"},
        "rate_limit_error",
        True,
        "slow down",
        id="429",
    ),
    pytest.param(500, openai_error("boom"), {}, "api_error", True, "boom", id="500"),
    # an older vLLM: {"object": "error", "message": ...}
    pytest.param(
        502,
        b'{"object":"error","message":"engine dead","type":"x","code":502}',
        {},
        "api_error",
        True,
        "engine dead",
        id="502-vllm-old",
    ),
    pytest.param(503, b"Service Unavailable", {}, "overloaded_error", True, "HTTP 503", id="503"),
    pytest.param(504, b"", {}, "timeout_error", True, "upstream answered HTTP 504", id="504"),
    # Ollama's native shape: {"error": "..."}
    pytest.param(
        529,
        b'{"error":"model is loading"}',
        {},
        "overloaded_error",
        True,
        "model is loading",
        id="529-string-error",
    ),
]


@pytest.mark.parametrize(
    ("status", "raw", "headers", "error_type", "retryable", "text_in_message"), ERRORS
)
def test_error_translation(
    status: int,
    raw: bytes,
    headers: dict[str, str],
    error_type: str,
    retryable: bool,
    text_in_message: str,
) -> None:
    error = error_from_openai(status, raw, headers, now=0.0)
    assert (error.upstream_status, error.error_type, error.retryable) == (
        status,
        error_type,
        retryable,
    )
    assert text_in_message in error.message
    assert error.retry_after == (2.0 if "retry-after" in headers else None)
