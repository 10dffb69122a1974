"""PDF text for OpenAI-compatible backends: read in a child process, bounded in pages,
characters, CPU time and concurrency; a PDF over a bound is its request's
invalid_request_error, and the server's event loop never runs pypdf."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from batchd.backends.pdf import PdfExtractor, PdfLimits, owned_by
from batchd.errors import InvalidRequest
from tests.conftest import StartServer, wait_ended
from tests.support.openai_upstream import FakeOpenAI, serve_openai
from tests.support.pdf import pdf_base64, shared_stream_pdf

# 200 pages sharing one content stream: 120 KB, about 20 s of pypdf CPU and 9 M characters.
CRAFTED = base64.b64encode(shared_stream_pdf(200, 1500)).decode()


def _pdf_block(data: str, title: str | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": data},
    }
    if title:
        block["title"] = title
    return block


def _request(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [*blocks, {"type": "text", "text": "?"}]}]}


def _inline(request: dict[str, Any], **limits: Any) -> dict[str, Any]:
    return asyncio.run(PdfExtractor(PdfLimits(**limits)).inline_pdfs(request))


def test_a_pdf_becomes_its_marked_text() -> None:
    request = _request(_pdf_block(pdf_base64("First page", "Second page"), title="Q3"))

    [document, _] = _inline(request)["messages"][0]["content"]

    text = "[PDF document 'Q3', text extracted by batchd]\nFirst page\n\nSecond page"
    assert document == {"type": "document", "source": {"type": "text", "data": text}}


@pytest.mark.parametrize(
    ("pdf", "limits", "refusal"),
    [
        # more pages than the bound: refused before any text is read
        pytest.param(CRAFTED, {}, "the PDF has 200 pages; at most 100", id="pages"),
        # text past the bound: refused as soon as it passes
        pytest.param(
            CRAFTED, {"max_pages": 1000, "max_characters": 50_000}, "passes 50000", id="chars"
        ),
        # within the page and character bounds, but over the CPU time: the child is stopped
        pytest.param(
            CRAFTED,
            {"max_pages": 1000, "max_characters": 10**9, "cpu_seconds": 1},
            "more than 1 s of CPU",
            id="cpu",
        ),
        # no text layer at all
        pytest.param(pdf_base64(""), {}, "no extractable text", id="empty"),
        # not a PDF
        pytest.param("aGVsbG8gd29ybGQ=", {}, "could not be read", id="garbage"),
    ],
)
def test_a_pdf_over_a_bound_is_an_invalid_request(
    pdf: str, limits: dict[str, Any], refusal: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        _inline(_request(_pdf_block(pdf)), **limits)

    assert refusal in refused.value.message
    assert refused.value.message.startswith("messages.0.content.0")


async def test_one_key_reads_one_pdf_at_a_time_while_others_go_ahead() -> None:
    extractor = PdfExtractor(PdfLimits(workers=3, workers_per_key=1))

    async def read(who: str) -> None:
        with owned_by(who):
            await extractor.inline_pdfs(_request(_pdf_block(pdf_base64(who))))

    async with asyncio.TaskGroup() as group:
        first = group.create_task(read("alice"))
        await asyncio.sleep(0)  # alice's first PDF takes alice's only turn
        second, bob = group.create_task(read("alice")), group.create_task(read("bob"))
        await bob  # bob is not kept waiting by alice's PDFs ...
        assert not second.done() or first.done()  # ... and alice's second waits her turn
    assert extractor._owners == {}


# --- end to end: a crafted PDF in a batch -----------------------------------------------


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with serve_openai() as fake:
        yield fake


def test_a_crafted_pdf_errors_its_request_and_the_others_succeed(
    start_server: StartServer, fake_openai: FakeOpenAI
) -> None:
    table = {"name": "local", "kind": "openai", "base_url": fake_openai.url, "models": ["local-*"]}
    server = start_server(backends=[table])
    params = {"model": "local-chat", "max_tokens": 8}
    crafted = {**params, **_request(_pdf_block(CRAFTED))}
    plain = {**params, **_request(_pdf_block(pdf_base64("fine")))}
    with anthropic.Anthropic(base_url=server.url, api_key="sk") as client:
        # params built as plain JSON, past the SDK's types: sent as extra body
        requests = [
            {"custom_id": "crafted", "params": crafted},
            {"custom_id": "plain", "params": plain},
        ]
        batch = client.messages.batches.create(requests=[], extra_body={"requests": requests})
        wait_ended(client, batch.id, timeout=60)
        results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}

    assert results["plain"].type == "succeeded"
    assert results["crafted"].type == "errored"
    assert results["crafted"].error.error.type == "invalid_request_error"
    assert "200 pages" in results["crafted"].error.error.message
