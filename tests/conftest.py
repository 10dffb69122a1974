from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import anthropic
import pytest
from anthropic.types import ContentBlockParam
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from anthropic.types.messages.batch_create_params import Request

from batchd.store import Store, open_store
from tests.support.invariants import count_mismatches
from tests.support.postgres import PostgresServer, ephemeral_postgres
from tests.support.server import RunningServer, make_settings, serve_batchd
from tests.support.upstream import FakeUpstream, serve_upstream

StartServer = Callable[..., RunningServer]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One ephemeral PostgreSQL server for the session (skipped where none is installed,
    except in CI, where that fails)."""
    with ephemeral_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def each_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each dialect (PostgreSQL: a new database on the session's server)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/each.db"
    url: str = request.getfixturevalue("postgres").new_database_sync()
    return url


@pytest.fixture
async def each_store(each_db_url: str) -> AsyncIterator[Store]:
    """A migrated store on each dialect."""
    store = await open_store(each_db_url, migrate=True)
    yield store
    await store.close()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start batchd on a private SQLite file; keyword arguments override Settings, but for
    ``db_path`` and ``clock`` (default ``time.time``).

    When the test is over, every database it used must have counts that agree with its rows.
    """
    databases: set[Path] = set()
    with ExitStack() as stack:

        def start(**overrides: Any) -> RunningServer:
            db = Path(overrides.pop("db_path", tmp_path / "batchd.db"))
            clock = overrides.pop("clock", time.time)
            databases.add(db)
            settings = make_settings(str(db), **overrides)
            return stack.enter_context(serve_batchd(settings, clock=clock))

        yield start
    for db in sorted(databases):
        assert count_mismatches(db) == [], db


@pytest.fixture
def held() -> Iterator[FakeUpstream]:
    """An upstream whose calls wait until the test releases them."""
    with serve_upstream() as upstream:
        upstream.hold()
        try:
            yield upstream
        finally:
            upstream.release()


@pytest.fixture
def server(start_server: StartServer) -> RunningServer:
    return start_server()


@pytest.fixture
def client(server: RunningServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=server.url, api_key="sk-test", _strict_response_validation=True
    ) as c:
        yield c


def wait_ended(
    client: anthropic.Anthropic, batch_id: str, timeout: float = 60
) -> anthropic.types.messages.MessageBatch:
    """Poll a batch until it has ended, as a user would."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} still {batch.processing_status}")
        time.sleep(0.05)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Wait for ``condition`` to hold, looking every 10 ms; fail with ``what`` after ``timeout``
    (a bound on a hang, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def mock_request(
    custom_id: str, text: str | list[ContentBlockParam] = "hello", **params: Any
) -> Request:
    """A batch request for the mock; ``params`` are Messages params that replace the defaults."""
    body: MessageCreateParamsNonStreaming = {
        "model": "mock",
        "max_tokens": 32,
        "messages": [{"role": "user", "content": text}],
    }
    return {"custom_id": custom_id, "params": cast(MessageCreateParamsNonStreaming, body | params)}


def body_of(error: anthropic.APIStatusError) -> dict[str, Any]:
    """The JSON object an API error answered, as the SDK decoded it."""
    assert isinstance(error.body, dict), error.body
    return error.body
