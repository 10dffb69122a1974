"""The text of base64 PDF documents, for backends that take only text (``openai``).

pypdf is pure Python and holds the GIL: one crafted PDF (200 pages sharing one content
stream) costs seconds of CPU and millions of characters, and a thread does not help. So a
backend extracts in a child process (``PdfExtractor``), one per request that carries PDFs,
which this module runs as a script:

* the child limits its own CPU time (``RLIMIT_CPU``) and address space, and the parent kills
  it at a wall-clock deadline, or when the request is cancelled;
* a PDF over ``max_pages`` pages, or whose text passes ``max_characters``, is refused;
* at most ``workers`` children run at once per backend, and at most ``workers_per_key`` for
  one owner (a key for ``POST /v1/messages`` and count_tokens, a batch for batch work: the
  engine does not know a batch's key); the others wait their turn.

A refused PDF is that request's ``invalid_request_error``. ``inline_pdfs`` replaces each PDF
document block of a request with a text document of its marked text, so the translation to
chat.completions (``openai_translate.py``) never parses a PDF itself; ``pdf_text`` is the
in-process reading that translation falls back on, under the same page and character bounds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import math
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import msgspec

from batchd.errors import InvalidRequest

# Who a PDF's extraction is counted against; set by the API per caller and by the engine
# per batch. Unset: everyone shares one owner.
owner: ContextVar[str] = ContextVar("pdf_owner", default="")


@contextlib.contextmanager
def owned_by(who: str) -> Iterator[None]:
    """Count the PDFs read in the block (in this task) against ``who``."""
    token = owner.set(who)
    try:
        yield
    finally:
        owner.reset(token)


@dataclass(frozen=True, slots=True)
class PdfLimits:
    max_pages: int = 100
    max_characters: int = 1_000_000
    cpu_seconds: float = 10.0
    memory_bytes: int = 1024 * 1024 * 1024
    workers: int = 2
    workers_per_key: int = 1


class _Job(msgspec.Struct):
    """What a child is sent: its limits and the PDFs of one request."""

    limits: PdfLimits
    pdfs: list[bytes]


class _Refused(Exception):
    """A PDF over a limit: the message says which."""


def marked(title: Any, text: str) -> str:
    """The text sent for a PDF: marked as extracted, with its title when it has one."""
    mark = f"PDF document {title!r}" if title else "PDF document"
    return f"[{mark}, text extracted by batchd]\n{text}"


def _decoded(data: Any, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise InvalidRequest(f"{where}.source.data: the PDF is not valid base64") from None


def extract_text(pdf: bytes, limits: PdfLimits) -> str:
    """The text of a PDF, page by page, within the limits; ``_Refused`` past one of them;
    ValueError when there is no text; pypdf's own errors on a malformed file."""
    from pypdf import PdfReader  # imported where it runs: in the child process

    reader = PdfReader(io.BytesIO(pdf))
    if len(reader.pages) > limits.max_pages:
        raise _Refused(
            f"the PDF has {len(reader.pages)} pages; at most {limits.max_pages} are read"
        )
    pages, characters = [], 0
    for page in reader.pages:
        text = page.extract_text().strip()
        characters += len(text)
        if characters > limits.max_characters:
            raise _Refused(f"the PDF's text passes {limits.max_characters} characters")
        if text:
            pages.append(text)
    if not pages:
        raise ValueError("no text")
    return "\n\n".join(pages)


def _outcome(pdf: bytes, limits: PdfLimits) -> dict[str, str]:
    """What the child answers for one PDF: its text, or why it has none."""
    try:
        return {"text": extract_text(pdf, limits)}
    except _Refused as exc:
        return {"refused": str(exc)}
    except ValueError as exc:
        if str(exc) == "no text":
            return {"empty": ""}
        return {"unreadable": f"{exc.__class__.__name__}: {exc}"}
    except Exception as exc:  # pypdf raises many kinds on a malformed or encrypted file
        return {"unreadable": f"{exc.__class__.__name__}: {exc}"}


def _as_text(outcome: Mapping[str, str], where: str) -> str:
    if "text" in outcome:
        return outcome["text"]
    if "refused" in outcome:
        raise InvalidRequest(f"{where}: {outcome['refused']}")
    if "empty" in outcome:
        raise InvalidRequest(
            f"{where}: the PDF has no extractable text (a scanned document?); an "
            "OpenAI-compatible backend can take only its text"
        )
    raise InvalidRequest(f"{where}: the PDF could not be read ({outcome['unreadable']})")


def pdf_text(data: Any, where: str, limits: PdfLimits = PdfLimits()) -> str:
    """The text of a base64 PDF, read in this process (no CPU limit: ``PdfExtractor`` is
    what backends use); InvalidRequest when there is none to read or it is over a limit."""
    return _as_text(_outcome(_decoded(data, where), limits), where)


# -- the requests' PDF blocks --------------------------------------------------------------


def _blocks(request: Mapping[str, Any]) -> Iterator[tuple[list[Any], int, str]]:
    """(list, index, where) of every content block a PDF document may be: in the system
    prompt, in messages, and in the content of tool results."""
    system = request.get("system")
    if isinstance(system, list):
        yield from ((system, j, f"system.{j}") for j in range(len(system)))
    for i, message in enumerate(request.get("messages") or ()):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, block in enumerate(content):
            where = f"messages.{i}.content.{j}"
            yield content, j, where
            if not isinstance(block, dict) or block.get("type") != "tool_result":
                continue
            inner = block.get("content")
            if isinstance(inner, list):
                yield from ((inner, k, f"{where}.content.{k}") for k in range(len(inner)))


def _is_pdf(block: Any) -> bool:
    if not isinstance(block, dict) or block.get("type") != "document":
        return False
    source = block.get("source")
    return (
        isinstance(source, dict)
        and source.get("type") == "base64"
        and source.get("media_type") == "application/pdf"
    )


class PdfExtractor:
    """Extracts the PDFs of requests in child processes, within ``limits``."""

    def __init__(self, limits: PdfLimits = PdfLimits()) -> None:
        self.limits = limits
        self._running = asyncio.Semaphore(limits.workers)
        self._owners: Counter[str] = Counter()
        self._turns = asyncio.Condition()

    async def inline_pdfs(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` with each base64 PDF document replaced by a text document of its
        marked text (the request is changed in place and returned)."""
        found = [(blocks, j, where) for blocks, j, where in _blocks(request) if _is_pdf(blocks[j])]
        if not found:
            return request
        pdfs = [_decoded(blocks[j]["source"].get("data"), where) for blocks, j, where in found]
        outcomes = await self._extract(pdfs, found[0][2])
        for (blocks, j, where), outcome in zip(found, outcomes, strict=True):
            text = marked(blocks[j].get("title"), _as_text(outcome, where))
            blocks[j] = {"type": "document", "source": {"type": "text", "data": text}}
        return request

    async def _extract(self, pdfs: list[bytes], where: str) -> list[dict[str, str]]:
        async with self._owner_turn(owner.get()), self._running:
            return await self._run_child(pdfs, where)

    @contextlib.asynccontextmanager
    async def _owner_turn(self, who: str) -> Any:
        async with self._turns:
            await self._turns.wait_for(lambda: self._owners[who] < self.limits.workers_per_key)
            self._owners[who] += 1
        try:
            yield
        finally:
            self._owners[who] -= 1
            if not self._owners[who]:
                del self._owners[who]
            async with self._turns:
                self._turns.notify_all()

    async def _run_child(self, pdfs: list[bytes], where: str) -> list[dict[str, str]]:
        limits = self.limits
        job = msgspec.msgpack.encode(_Job(limits, pdfs))
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",  # not this file's folder first on the path: its http.py is no stdlib module
            __file__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(2 * limits.cpu_seconds + 10):
                out, _ = await child.communicate(job)
        except TimeoutError:
            raise InvalidRequest(
                f"{where}: the PDF took longer than {2 * limits.cpu_seconds + 10:g} s to read"
            ) from None
        finally:
            if child.returncode is None:  # a deadline, or the request was cancelled
                child.kill()
                await child.wait()
        if child.returncode != 0:
            raise InvalidRequest(
                f"{where}: the PDF took more than {limits.cpu_seconds:g} s of CPU or "
                f"{limits.memory_bytes // 2**20} MiB of memory to read"
            )
        outcomes: list[dict[str, str]] = msgspec.msgpack.decode(out)
        return outcomes


def _child() -> None:
    """The child process: limit itself, then answer one ``_Job`` on stdout."""
    import resource

    job = msgspec.msgpack.decode(sys.stdin.buffer.read(), type=_Job)
    cpu = math.ceil(job.limits.cpu_seconds)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = job.limits.memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    outcomes = [_outcome(pdf, job.limits) for pdf in job.pdfs]
    sys.stdout.buffer.write(msgspec.msgpack.encode(outcomes))


if __name__ == "__main__":
    _child()
