"""OpenAI chat.completions -> Anthropic Messages -> chat.completions: table tests of the pure
translation (``backends/messages_translate.py``) against the forward one
(``backends/openai_translate.py``).

Each request row is a chat body (valid as the ``openai`` SDK's request type), the Messages
params it becomes (valid as the ``anthropic`` SDK's request type), and what the forward
translation makes of those params again: the same chat body unless the row says what
differs. Each response row is a Message (the ``anthropic`` SDK's ``Message``), the
chat.completion it becomes (the ``openai`` SDK's ``ChatCompletion``), and the Message that
the forward translation reads back from it.
"""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from openai.types.chat import ChatCompletion
from pydantic import TypeAdapter

from batchd.backends.messages_translate import completion_from_message, messages_request
from batchd.backends.openai_translate import chat_request, message_from_completion
from batchd.errors import InvalidRequest
from tests.support.pdf import pdf_base64
from tests.test_openai_translate import _forced, assert_valid_openai_body

MODEL = "c-1"
DEFAULT_MAX = 4096
_ANTHROPIC_BODY = TypeAdapter(MessageCreateParamsNonStreaming)
# fields of API version 2023-06-01 (the one the anthropic backend sends) that the 2.x SDK's
# types no longer declare (../shared/spec/message-batches.md, "Version-dependent")
VERSIONED = {"temperature", "top_p", "top_k"}


def assert_valid_anthropic_body(params: dict[str, Any]) -> None:
    """The params validate as the SDK's request type and nothing in them was dropped."""
    validated = _forced(_ANTHROPIC_BODY.validate_python(params))
    assert validated == {k: v for k, v in params.items() if k not in VERSIONED}


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": list(messages), "max_tokens": 64, **fields}


def params(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "messages": list(messages), **fields}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **extra}


def system(content: Any) -> dict[str, Any]:
    return {"role": "system", "content": content}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_msg(call_id: str, content: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def tool_use(call_id: str, name: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": tool_input}


def tool_result(call_id: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, **extra, "content": content}


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
WEATHER_FN: dict[str, Any] = {
    "type": "function",
    "function": {"name": "weather", "description": "Weather in a city", "parameters": SCHEMA},
}
WEATHER = {"name": "weather", "input_schema": SCHEMA, "description": "Weather in a city"}
PNG = "iVBORw0KGgo="
PDF = pdf_base64("Quarterly revenue rose 12 percent")
SAME = None  # the forward translation gives the chat body back unchanged

REQUESTS = [
    # a plain string turn
    pytest.param(chat(user("Hi")), params(user("Hi")), SAME, id="string"),
    # a system message becomes the system prompt
    pytest.param(
        chat(system("Be brief."), user("Hi")),
        params(user("Hi"), system="Be brief."),
        SAME,
        id="system",
    ),
    # several leading system messages are joined by blank lines
    pytest.param(
        chat(system("One."), system("Two."), user("Hi")),
        params(user("Hi"), system="One.\n\nTwo."),
        chat(system("One.\n\nTwo."), user("Hi")),
        id="systems-joined",
    ),
    # a developer message is a system prompt too
    pytest.param(
        chat({"role": "developer", "content": "Rules"}, user("Hi")),
        params(user("Hi"), system="Rules"),
        chat(system("Rules"), user("Hi")),
        id="developer",
    ),
    # system text parts are joined
    pytest.param(
        chat(system([text("a"), text("b")]), user("Hi")),
        params(user("Hi"), system="a\n\nb"),
        chat(system("a\n\nb"), user("Hi")),
        id="system-parts",
    ),
    # one text part is sent as its string
    pytest.param(chat(user([text("Hi")])), params(user("Hi")), chat(user("Hi")), id="one-part"),
    # several text parts stay blocks
    pytest.param(
        chat(user([text("a"), text("b")])), params(user([text("a"), text("b")])), SAME, id="parts"
    ),
    # an image as a data URL becomes a base64 image block
    pytest.param(
        chat(
            user(
                [
                    text("What is this?"),
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ]
            )
        ),
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
        SAME,
        id="image-data-url",
    ),
    # an image by https URL becomes a url image block
    pytest.param(
        chat(user([{"type": "image_url", "image_url": {"url": "https://x/cat.jpg"}}])),
        params(user([{"type": "image", "source": {"type": "url", "url": "https://x/cat.jpg"}}])),
        SAME,
        id="image-url",
    ),
    # an inline PDF file becomes a document block (forward: its text, extracted)
    pytest.param(
        chat(
            user(
                [
                    {
                        "type": "file",
                        "file": {
                            "file_data": f"data:application/pdf;base64,{PDF}",
                            "filename": "q3.pdf",
                        },
                    }
                ]
            )
        ),
        params(
            user(
                [
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                    }
                ]
            )
        ),
        chat(user("[PDF document, text extracted by batchd]\nQuarterly revenue rose 12 percent")),
        id="file-pdf",
    ),
    # an assistant string turn
    pytest.param(
        chat(user("Hi"), assistant("Hello"), user("Bye")),
        params(user("Hi"), assistant("Hello"), user("Bye")),
        SAME,
        id="assistant-string",
    ),
    # assistant text parts become text blocks (forward: joined)
    pytest.param(
        chat(user("Hi"), assistant([text("a"), text("b")])),
        params(user("Hi"), assistant([text("a"), text("b")])),
        chat(user("Hi"), assistant("a\n\nb")),
        id="assistant-parts",
    ),
    # an assistant refusal is kept as text
    pytest.param(
        chat(user("Hi"), assistant(None, refusal="I can't.")),
        params(user("Hi"), assistant("I can't.")),
        chat(user("Hi"), assistant("I can't.")),
        id="assistant-refusal",
    ),
    # assistant tool calls alone: tool_use blocks with the arguments as an object
    pytest.param(
        chat(
            user("Weather?"),
            assistant(None, tool_calls=[call("toolu_1", "weather", '{"city":"Oslo"}')]),
        ),
        params(user("Weather?"), assistant([tool_use("toolu_1", "weather", {"city": "Oslo"})])),
        SAME,
        id="tool-calls",
    ),
    # assistant text and a tool call
    pytest.param(
        chat(
            user("Weather?"),
            assistant("Checking.", tool_calls=[call("toolu_1", "weather", "{}")]),
        ),
        params(
            user("Weather?"), assistant([text("Checking."), tool_use("toolu_1", "weather", {})])
        ),
        SAME,
        id="text-and-tool-call",
    ),
    # empty arguments text is an empty object
    pytest.param(
        chat(user("Go"), assistant(None, tool_calls=[call("toolu_1", "run", "")])),
        params(user("Go"), assistant([tool_use("toolu_1", "run", {})])),
        chat(user("Go"), assistant(None, tool_calls=[call("toolu_1", "run", "{}")])),
        id="empty-arguments",
    ),
    # a tool message becomes a tool_result in a user turn
    pytest.param(
        chat(tool_msg("toolu_1", "12 C")),
        params(user([tool_result("toolu_1", "12 C")])),
        SAME,
        id="tool-result",
    ),
    # the error mark becomes is_error
    pytest.param(
        chat(tool_msg("toolu_1", "[tool error] no such city")),
        params(user([tool_result("toolu_1", "no such city", is_error=True)])),
        SAME,
        id="tool-result-error",
    ),
    # tool message content parts are joined
    pytest.param(
        chat(tool_msg("toolu_1", [text("12 C"), text("windy")])),
        params(user([tool_result("toolu_1", "12 C\n\nwindy")])),
        chat(tool_msg("toolu_1", "12 C\n\nwindy")),
        id="tool-result-parts",
    ),
    # several tool messages and the user's next words make one user turn
    pytest.param(
        chat(tool_msg("toolu_a", "1"), tool_msg("toolu_b", "2"), user("And tomorrow?")),
        params(
            user([tool_result("toolu_a", "1"), tool_result("toolu_b", "2"), text("And tomorrow?")])
        ),
        SAME,
        id="tool-results-then-user",
    ),
    # consecutive user messages make one turn
    pytest.param(
        chat(user("a"), user("b")),
        params(user([text("a"), text("b")])),
        chat(user([text("a"), text("b")])),
        id="user-user",
    ),
    # a whole tool conversation
    pytest.param(
        chat(
            user("Oslo and Rome?"),
            assistant(
                None,
                tool_calls=[
                    call("toolu_o", "weather", '{"city":"Oslo"}'),
                    call("toolu_r", "weather", '{"city":"Rome"}'),
                ],
            ),
            tool_msg("toolu_o", "3 C"),
            tool_msg("toolu_r", "19 C"),
            assistant("Oslo 3 C, Rome 19 C."),
            user("Thanks"),
            tools=[WEATHER_FN],
        ),
        params(
            user("Oslo and Rome?"),
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
        SAME,
        id="tool-conversation",
    ),
    # function tools become custom tools; strict is kept
    pytest.param(
        chat(
            user("Hi"),
            tools=[{"type": "function", "function": {**WEATHER_FN["function"], "strict": True}}],
        ),
        params(user("Hi"), tools=[{**WEATHER, "strict": True}]),
        SAME,
        id="tools-strict",
    ),
    # a function without parameters takes an empty object
    pytest.param(
        chat(user("Hi"), tools=[{"type": "function", "function": {"name": "now"}}]),
        params(
            user("Hi"),
            tools=[{"name": "now", "input_schema": {"type": "object", "properties": {}}}],
        ),
        chat(
            user("Hi"),
            tools=[
                {
                    "type": "function",
                    "function": {
                        "name": "now",
                        "parameters": {"type": "object", "properties": {}},
                    },
                }
            ],
        ),
        id="tool-no-parameters",
    ),
    # tool_choice auto
    pytest.param(
        chat(user("Hi"), tools=[WEATHER_FN], tool_choice="auto"),
        params(user("Hi"), tools=[WEATHER], tool_choice={"type": "auto"}),
        SAME,
        id="choice-auto",
    ),
    # tool_choice required -> any
    pytest.param(
        chat(user("Hi"), tools=[WEATHER_FN], tool_choice="required"),
        params(user("Hi"), tools=[WEATHER], tool_choice={"type": "any"}),
        SAME,
        id="choice-required",
    ),
    # tool_choice none
    pytest.param(
        chat(user("Hi"), tools=[WEATHER_FN], tool_choice="none"),
        params(user("Hi"), tools=[WEATHER], tool_choice={"type": "none"}),
        SAME,
        id="choice-none",
    ),
    # a named function -> a named tool
    pytest.param(
        chat(
            user("Hi"),
            tools=[WEATHER_FN],
            tool_choice={"type": "function", "function": {"name": "weather"}},
        ),
        params(user("Hi"), tools=[WEATHER], tool_choice={"type": "tool", "name": "weather"}),
        SAME,
        id="choice-named",
    ),
    # parallel_tool_calls false -> disable_parallel_tool_use
    pytest.param(
        chat(user("Hi"), tools=[WEATHER_FN], tool_choice="auto", parallel_tool_calls=False),
        params(
            user("Hi"),
            tools=[WEATHER],
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        ),
        SAME,
        id="no-parallel",
    ),
    # parallel_tool_calls false alone: an auto choice that says so
    pytest.param(
        chat(user("Hi"), tools=[WEATHER_FN], parallel_tool_calls=False),
        params(
            user("Hi"),
            tools=[WEATHER],
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        ),
        chat(user("Hi"), tools=[WEATHER_FN], tool_choice="auto", parallel_tool_calls=False),
        id="no-parallel-alone",
    ),
    # a tool_choice without tools is not sent (as forward)
    pytest.param(
        chat(user("Hi"), tool_choice="auto"), params(user("Hi")), chat(user("Hi")), id="no-tools"
    ),
    # max_completion_tokens -> max_tokens
    pytest.param(
        {"model": MODEL, "messages": [user("Hi")], "max_completion_tokens": 9},
        {**params(user("Hi")), "max_tokens": 9},
        {**chat(user("Hi")), "max_tokens": 9},
        id="max-completion-tokens",
    ),
    # no limit: the backend's default
    pytest.param(
        {"model": MODEL, "messages": [user("Hi")]},
        {**params(user("Hi")), "max_tokens": DEFAULT_MAX},
        {**chat(user("Hi")), "max_tokens": DEFAULT_MAX},
        id="max-tokens-default",
    ),
    # one stop string -> a list of one
    pytest.param(
        chat(user("Hi"), stop="END"),
        params(user("Hi"), stop_sequences=["END"]),
        chat(user("Hi"), stop=["END"]),
        id="stop-string",
    ),
    # a stop list
    pytest.param(
        chat(user("Hi"), stop=["END", "###"]),
        params(user("Hi"), stop_sequences=["END", "###"]),
        SAME,
        id="stop-list",
    ),
    # sampling; top_k is the vLLM/SGLang extension both ways
    pytest.param(
        chat(user("Hi"), temperature=0.2, top_p=0.9, top_k=40),
        params(user("Hi"), temperature=0.2, top_p=0.9, top_k=40),
        SAME,
        id="sampling",
    ),
    # user -> metadata.user_id
    pytest.param(
        chat(user("Hi"), user="u-42"),
        params(user("Hi"), metadata={"user_id": "u-42"}),
        SAME,
        id="user",
    ),
    # what has no Messages counterpart and changes nothing is dropped
    pytest.param(
        chat(
            {**user("Hi"), "name": "ann"},
            seed=7,
            store=False,
            metadata={"k": "v"},
            service_tier="auto",
            n=1,
            response_format={"type": "text"},
            frequency_penalty=0,
            presence_penalty=0,
            logprobs=False,
        ),
        params(user("Hi")),
        chat(user("Hi")),
        id="dropped",
    ),
]


@pytest.mark.parametrize(("chat_body", "expected", "back"), REQUESTS)
def test_chat_to_messages_and_back(
    chat_body: dict[str, Any], expected: dict[str, Any], back: dict[str, Any] | None
) -> None:
    assert_valid_openai_body(chat_body)
    translated = messages_request(chat_body, model=MODEL, default_max_tokens=DEFAULT_MAX)
    assert translated == expected
    assert_valid_anthropic_body(translated)
    assert chat_request(translated, model=MODEL) == (chat_body if back is SAME else back)


REFUSED = [
    # several choices
    pytest.param(chat(user("Hi"), n=2), "n:", id="n"),
    # log probabilities
    pytest.param(chat(user("Hi"), logprobs=True), "logprobs", id="logprobs"),
    # JSON mode
    pytest.param(
        chat(user("Hi"), response_format={"type": "json_object"}),
        "response_format",
        id="json-mode",
    ),
    # a temperature the Messages API does not take
    pytest.param(chat(user("Hi"), temperature=1.5), "temperature", id="temperature"),
    # penalties
    pytest.param(chat(user("Hi"), frequency_penalty=0.5), "frequency_penalty", id="penalty"),
    # an unknown key
    pytest.param(chat(user("Hi"), frobnicate=1), "frobnicate", id="unknown-key"),
    # audio input
    pytest.param(
        chat(user([{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}])),
        "content part 'input_audio'",
        id="audio",
    ),
    # a file that is not an inline PDF
    pytest.param(
        chat(user([{"type": "file", "file": {"file_id": "file-1"}}])), "inline PDF", id="file-id"
    ),
    # an image URL of another scheme
    pytest.param(
        chat(user([{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}])),
        "image_url.url",
        id="image-ftp",
    ),
    # a system message after the conversation began
    pytest.param(chat(user("Hi"), system("Late")), "messages.1.role", id="late-system"),
    # the legacy function role
    pytest.param(chat({"role": "function", "name": "f", "content": "x"}), "role", id="function"),
    # arguments that are not a JSON object
    pytest.param(
        chat(user("Go"), assistant(None, tool_calls=[call("c", "f", "[1]")])),
        "arguments",
        id="arguments-not-object",
    ),
    # a tool call without an id
    pytest.param(
        chat(
            user("Go"),
            assistant(None, tool_calls=[{"type": "function", "function": {"name": "f"}}]),
        ),
        ".id",
        id="call-no-id",
    ),
    # a custom (non-function) tool
    pytest.param(
        chat(user("Hi"), tools=[{"type": "custom", "custom": {"name": "x"}}]),
        "only function tools",
        id="custom-tool",
    ),
    # only system messages
    pytest.param(chat(system("Rules")), "no user message", id="no-user"),
    # no messages at all
    pytest.param(chat(), "messages", id="empty"),
]


@pytest.mark.parametrize(("chat_body", "message"), REFUSED)
def test_untranslatable_chat_is_invalid(chat_body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message.replace(".", r"\.")):
        messages_request(chat_body, model=MODEL, default_max_tokens=DEFAULT_MAX)


def message(content: list[dict[str, Any]], stop_reason: str, **usage: int) -> dict[str, Any]:
    return {
        "id": "msg_abc",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.get("input", 10),
            "output_tokens": usage.get("output", 5),
            "cache_creation_input_tokens": usage.get("written", 0),
            "cache_read_input_tokens": usage.get("read", 0),
        },
    }


def completion(answer: dict[str, Any], finish: str, prompt: int = 10, cached: int = 0) -> Any:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [{"index": 0, "message": answer, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": 5,
            "total_tokens": prompt + 5,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


def said(content: str | None, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "refusal": None, **extra}


RESPONSES = [
    # a text answer that ended its turn
    pytest.param(
        message([text("Hello")], "end_turn"), completion(said("Hello"), "stop"), SAME, id="text"
    ),
    # cut at max_tokens
    pytest.param(
        message([text("Hel")], "max_tokens"), completion(said("Hel"), "length"), SAME, id="length"
    ),
    # a tool call
    pytest.param(
        message([tool_use("toolu_1", "weather", {"city": "Oslo"})], "tool_use"),
        completion(
            said(None, tool_calls=[call("toolu_1", "weather", '{"city":"Oslo"}')]), "tool_calls"
        ),
        SAME,
        id="tool-call",
    ),
    # text and a tool call
    pytest.param(
        message([text("Checking."), tool_use("toolu_1", "weather", {})], "tool_use"),
        completion(said("Checking.", tool_calls=[call("toolu_1", "weather", "{}")]), "tool_calls"),
        SAME,
        id="text-and-tool-call",
    ),
    # several text blocks are one content string
    pytest.param(
        message([text("a"), text("b")], "end_turn"),
        completion(said("ab"), "stop"),
        message([text("ab")], "end_turn"),
        id="text-blocks",
    ),
    # thinking is not shown
    pytest.param(
        message([{"type": "thinking", "thinking": "hm", "signature": "s"}, text("Hi")], "end_turn"),
        completion(said("Hi"), "stop"),
        message([text("Hi")], "end_turn"),
        id="thinking",
    ),
    # a stop sequence is a plain stop in chat
    pytest.param(
        {**message([text("Hi")], "stop_sequence"), "stop_sequence": "END"},
        completion(said("Hi"), "stop"),
        message([text("Hi")], "end_turn"),
        id="stop-sequence",
    ),
    # a refusal is content_filter
    pytest.param(
        message([text("No.")], "refusal"),
        completion(said("No."), "content_filter"),
        SAME,
        id="refusal",
    ),
    # cached reads are in the prompt and its details
    pytest.param(
        message([text("Hi")], "end_turn", input=10, read=30),
        completion(said("Hi"), "stop", prompt=40, cached=30),
        SAME,
        id="cache-read",
    ),
    # cache writes are prompt tokens
    pytest.param(
        message([text("Hi")], "end_turn", input=10, written=7),
        completion(said("Hi"), "stop", prompt=17),
        message([text("Hi")], "end_turn", input=17),
        id="cache-write",
    ),
]


@pytest.mark.parametrize(("anthropic_message", "expected", "back"), RESPONSES)
def test_message_to_completion_and_back(
    anthropic_message: dict[str, Any], expected: dict[str, Any], back: dict[str, Any] | None
) -> None:
    anthropic.types.Message.model_validate(anthropic_message)
    translated = completion_from_message(anthropic_message, model=MODEL, created=1_700_000_000)
    assert translated == expected
    ChatCompletion.model_validate(translated, strict=True)
    read_back = message_from_completion(translated, model=MODEL)
    assert read_back == (anthropic_message if back is SAME else back)
