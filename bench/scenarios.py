"""The scenarios, each measured beside its baseline in the same run.

Every function returns rows: dicts of figures, one per size, with the ratio that judges it.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import random
import re
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec

from batchd.backends.mock import mock_message
from batchd.store.queries import load_migrations
from batchd.validation import check_params
from bench import harness, workload

MOCK = {"name": "mock", "kind": "mock", "models": ["claude-*", "mock"], "max_concurrency": 1024}
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")

Row = dict[str, Any]
Store = Callable[[], str]  # a fresh database's URL per call; None: a SQLite file in the folder
SDK_REQUESTS = 4_096


def _fresh(store: Store | None) -> str | None:
    return store() if store is not None else None


def batch_body(n: int) -> bytes:
    return json.dumps({"requests": workload.requests(n)}, separators=(",", ":")).encode()


def padded_batch_body(mib: int) -> bytes:
    """A create body of about ``mib`` MiB: realistic requests (at most the 100,000 a batch
    may hold), each padded by a ``metadata.user_id`` to reach the size."""
    target = mib * 2**20
    requests = workload.requests(min(100_000, max(1, target // 2048)))
    natural = len(json.dumps({"requests": requests}, separators=(",", ":")))
    pad = max(0, (target - natural) // len(requests) - len(',"metadata":{"user_id":""}'))
    for request in requests:
        request["params"]["metadata"] = {"user_id": "u" * pad}
    return json.dumps({"requests": requests}, separators=(",", ":")).encode()


def insert_queued(db: sqlite3.Connection, rows: Iterable[tuple[str, bytes]]) -> None:
    """Insert (custom_id, params) requests of the baseline's batch, queued for the mock, in
    one transaction."""
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO requests (batch_seq, custom_id, backend, params, state)"
        " VALUES (1, ?, 'mock', ?, 'queued')",
        rows,
    )
    db.execute("COMMIT")


def _fresh_db(path: Path) -> sqlite3.Connection:
    """A database with batchd's own schema, for the baselines."""
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    for _, script in load_migrations("sqlite"):
        db.executescript(script)
    db.execute(
        "INSERT INTO batches (id, workspace, processing_status, total, created_at, expires_at)"
        " VALUES ('b', 'w', 'in_progress', 0, 0, 1)"
    )
    return db


# -- 1. ingest ---------------------------------------------------------------------------


RequestRow = tuple[int, str, str, bytes, str]  # batch_seq, custom_id, backend, params, state


def checked_rows(body: bytes) -> list[RequestRow]:
    """Parse and check the body as a careful plain script would: the rows to insert."""
    gc.disable()
    try:
        requests = msgspec.json.decode(body)["requests"]
        seen = set()
        rows = []
        for item in requests:
            custom_id, params = item["custom_id"], item["params"]
            if not _CUSTOM_ID.fullmatch(custom_id) or custom_id in seen:
                raise ValueError(custom_id)
            seen.add(custom_id)
            if not {"model", "max_tokens", "messages"} <= params.keys():
                raise ValueError(custom_id)
            rows.append((1, custom_id, "mock", msgspec.json.encode(params), "queued"))
    finally:
        gc.enable()
    return rows


def mock_line(custom_id: str, raw: bytes) -> bytes:
    """The result line of one request on the instant mock, as batchd's engine makes it."""
    message = mock_message(check_params(raw), raw)
    return b'{"custom_id":"%s","result":{"type":"succeeded","message":%s}}' % (
        custom_id.encode(),
        msgspec.json.encode(message),
    )


def _raw_ingest(body: bytes, path: Path) -> float:
    """Parse, check and bulk-insert the body as a careful plain script would."""
    with closing(_fresh_db(path)) as db:
        started = time.perf_counter()
        rows = checked_rows(body)
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO requests (batch_seq, custom_id, backend, params, state)"
            " VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        db.execute("COMMIT")
        return time.perf_counter() - started


def ingest(
    sizes: list[int],
    repeat: int,
    workdir: Path,
    *,
    store: Store | None = None,
    raw_ingest: Callable[[bytes], float] | None = None,
    padded_mib: int | None = None,
) -> list[Row]:
    """``store`` and ``raw_ingest`` name another database and its baseline (PostgreSQL);
    ``padded_mib`` adds a row for one create of that many MiB (``padded_batch_body``).

    ``peak_rss_mib`` is the server's peak resident memory; ``growth_over_body``, how much it
    grew over its idle size during the create, per byte of body."""

    def baseline(body: bytes) -> float:
        return raw_ingest(body) if raw_ingest else _raw_ingest(body, workdir / "raw.db")

    bodies = [(n, batch_body(n)) for n in sizes]
    if padded_mib is not None:
        body = padded_batch_body(padded_mib)
        bodies.append((len(msgspec.json.decode(body)["requests"]), body))
    rows = []
    for n, body in bodies:

        def run(body: bytes = body) -> tuple[float, float, float]:
            with harness.batchd(
                workdir / "ingest", engine=False, backends=[MOCK], database=_fresh(store)
            ) as server:
                url = f"{server.url}/v1/messages/batches"
                took, rss, idle, _ = harness.timed_create(
                    server, functools.partial(harness.post_json, url, body)
                )
                return took, rss, idle

        took, rss, idle = harness.median_of(repeat, run, key=lambda r: r[0])
        raw = harness.median_of(repeat, functools.partial(baseline, body), key=float)
        mib = len(body) / 2**20
        rows.append({"requests": n} | harness.ingest_figures(took, raw, rss, idle, mib, "body"))
    return rows


# -- 2. engine overhead --------------------------------------------------------------------


def _raw_loop(body: bytes, path: Path) -> float:
    """Claim -> execute (the same mock answer) -> record, 256 at a time, on the same schema."""
    requests = msgspec.json.decode(body)["requests"]
    with closing(_fresh_db(path)) as db:
        insert_queued(db, [(r["custom_id"], msgspec.json.encode(r["params"])) for r in requests])
        return claim_loop(db, mock_line)


def claim_loop(db: sqlite3.Connection, execute: Callable[[str, bytes], bytes]) -> float:
    """The raw loop over a database's queued requests: claim 256, ``execute`` each (custom
    id, params -> result line), record them; the seconds it took."""
    started = time.perf_counter()
    while True:
        db.execute("BEGIN IMMEDIATE")
        claimed = db.execute(
            "UPDATE requests SET state = 'running', attempts = attempts + 1 WHERE id IN"
            " (SELECT id FROM requests WHERE backend = 'mock' AND batch_seq = 1"
            " AND state = 'queued' ORDER BY id LIMIT 256) RETURNING id, custom_id, params"
        ).fetchall()
        db.execute("COMMIT")
        if not claimed:
            return time.perf_counter() - started
        results = [(execute(custom_id, raw), row_id) for row_id, custom_id, raw in claimed]
        db.execute("BEGIN IMMEDIATE")
        db.executemany("UPDATE requests SET state = 'succeeded', result = ? WHERE id = ?", results)
        db.execute("COMMIT")


def engine(
    sizes: list[int],
    repeat: int,
    workdir: Path,
    *,
    store: Store | None = None,
    raw_loop: Callable[[bytes], float] | None = None,
) -> list[Row]:
    def baseline(body: bytes) -> float:
        return raw_loop(body) if raw_loop else _raw_loop(body, workdir / "raw.db")

    rows = []
    for n in sizes:
        body = batch_body(n)

        def run(body: bytes = body) -> float:
            with harness.batchd(
                workdir / "engine", backends=[MOCK], database=_fresh(store)
            ) as server:
                batch = harness.post_json(f"{server.url}/v1/messages/batches", body)
                started = time.perf_counter()
                harness.wait_ended(server.url, batch["id"])
                return time.perf_counter() - started

        took = harness.median_of(repeat, run, key=float)
        raw = harness.median_of(repeat, functools.partial(baseline, body), float)
        rows.append({"requests": n} | harness.throughput_figures(n, took, raw))
    return rows


# -- 3. fan-out ----------------------------------------------------------------------------


def _sdk_seconds(url: str, requests: list[dict[str, Any]], concurrency: int) -> float:
    return asyncio.run(_sdk_gather(url, requests, concurrency))


async def _sdk_gather(url: str, requests: list[dict[str, Any]], concurrency: int) -> float:
    import anthropic  # what a user would write instead of running batchd

    semaphore = asyncio.Semaphore(concurrency)
    # The SDK's defaults but the connect timeout: its pool keeps 100 connections alive and
    # reconnects for the rest, and at C = 1,024 those connects took longer than its 5 s.
    # (A pool as large as C was measured too: slower still, 110 req/s at 1,024.)
    timeout = anthropic.Timeout(600.0, connect=60.0)
    async with anthropic.AsyncAnthropic(
        base_url=url, api_key="k", max_retries=0, timeout=timeout
    ) as client:

        async def one(params: dict[str, Any]) -> None:
            rest = {k: v for k, v in params.items() if k not in ("model", "max_tokens", "messages")}
            async with semaphore:
                await client.messages.create(
                    model=params["model"],
                    max_tokens=params["max_tokens"],
                    messages=params["messages"],
                    extra_body=rest,
                )

        started = time.perf_counter()
        await asyncio.gather(*(one(r["params"]) for r in requests))
        return time.perf_counter() - started


def fanout(levels: list[int], repeat: int, workdir: Path, latency: float) -> list[Row]:
    rows = []
    with harness.fake_upstream(latency) as upstream:
        for concurrency in levels:
            n = max(concurrency * 20, 400)
            body = batch_body(n)
            backend = {
                "name": "upstream",
                "kind": "anthropic",
                "base_url": upstream,
                "models": ["claude-*"],
                "max_concurrency": concurrency,
                "adaptive_concurrency": False,
                "max_retries": 0,
            }

            def run(body: bytes = body, backend: dict[str, Any] = backend) -> float:
                with harness.batchd(workdir / "fanout", backends=[backend]) as server:
                    batch = harness.post_json(f"{server.url}/v1/messages/batches", body)
                    started = time.perf_counter()
                    ended = harness.wait_ended(server.url, batch["id"])
                    assert ended["request_counts"]["succeeded"] == len(json.loads(body)["requests"])
                    return time.perf_counter() - started

            took = harness.median_of(repeat, run, key=float)
            # The SDK is ~10x slower at C = 1,024 (about 75 s for 20,480 requests): its rate
            # is taken over at most SDK_REQUESTS, still several waves at every level.
            requests = workload.requests(min(n, SDK_REQUESTS))
            sdk = harness.median_of(
                repeat,
                functools.partial(_sdk_seconds, upstream, requests, concurrency),
                key=float,
            )
            little = concurrency / latency
            rows.append(
                {
                    "concurrency": concurrency,
                    "requests": n,
                    "batchd_req_s": round(n / took),
                    "little_req_s": round(little),
                    "of_little": round(n / took / little, 2),
                    "sdk_gather_req_s": round(len(requests) / sdk),
                    "vs_sdk": round(n / took / (len(requests) / sdk), 2),
                }
            )
    return rows


# -- 4. results ----------------------------------------------------------------------------


def _raw_stream(path: Path) -> tuple[float, int]:
    """Read every stored result line in keyset pages of 1,000, joined per page."""
    with closing(sqlite3.connect(path)) as db:
        started = time.perf_counter()
        after, size = 0, 0
        while True:
            page = db.execute(
                "SELECT id, result FROM requests WHERE batch_seq = 1 AND id > ? ORDER BY id"
                " LIMIT 1000",
                (after,),
            ).fetchall()
            if not page:
                return time.perf_counter() - started, size
            after = page[-1][0]
            size += len(b"".join([row[1] + b"\n" for row in page]))


def results(
    sizes: list[int],
    repeat: int,
    workdir: Path,
    *,
    store: Store | None = None,
    raw_stream: Callable[[str], tuple[float, int]] | None = None,
) -> list[Row]:
    """``raw_stream`` reads the database batchd wrote (its URL) as a plain script would."""
    import anthropic

    def baseline(url: str) -> tuple[float, int]:
        if raw_stream:
            return raw_stream(url)
        return _raw_stream(Path(url.removeprefix("sqlite:///")))

    rows = []
    for n in sizes:
        folder = workdir / f"results-{n}"
        database = _fresh(store)
        with harness.batchd(folder, backends=[MOCK], database=database) as server:
            batch = harness.post_json(f"{server.url}/v1/messages/batches", batch_body(n))
            harness.wait_ended(server.url, batch["id"])
        with harness.batchd(folder, backends=[MOCK], database=database) as server:  # fresh RSS
            url = f"{server.url}/v1/messages/batches/{batch['id']}/results"

            def http(url: str = url) -> tuple[float, int]:
                started = time.perf_counter()
                with urllib.request.urlopen(url) as response:
                    size = len(response.read())
                return time.perf_counter() - started, size

            took, size = harness.median_of(repeat, http, key=lambda r: r[0])
            with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
                started = time.perf_counter()
                lines = sum(1 for _ in client.messages.batches.results(batch["id"]))
                sdk = time.perf_counter() - started
            rss = harness.peak_rss_mib(server.pid)

        def raw_stream_of(db: str = server.db) -> tuple[float, int]:
            return baseline(db)

        raw, raw_size = harness.median_of(repeat, raw_stream_of, lambda r: r[0])
        assert lines == n
        assert raw_size == size
        mib = size / 2**20
        rows.append(
            {
                "requests": n,
                "mib": round(mib, 1),
                "batchd_mib_s": round(mib / took),
                "raw_mib_s": round(mib / raw),
                "ratio": round(raw / took, 2),
                "sdk_lines_s": round(lines / sdk),
                "peak_rss_mib": round(rss, 1),
            }
        )
    return rows


# -- 5. list and retrieve under size ---------------------------------------------------------


def _seed_batches(db_path: Path, count: int) -> list[str]:
    ids = [f"msgbatch_{i:026d}" for i in range(count)]
    with closing(sqlite3.connect(db_path)) as db, db:
        db.executemany(
            "INSERT INTO batches (id, workspace, processing_status, total, created_at,"
            " expires_at) VALUES (?, 'default', 'in_progress', 1, ?, ?)",
            [(batch_id, 1.8e9 + i, 1.8e9 + i + 86400) for i, batch_id in enumerate(ids)],
        )
    return ids


def lookups(counts: list[int], calls: int, workdir: Path) -> list[Row]:
    rows = []
    for count in counts:
        folder = workdir / f"lookups-{count}"
        with harness.batchd(folder, engine=False):
            pass  # creates the schema
        ids = _seed_batches(folder / harness.SQLITE_FILE, count)
        with harness.batchd(folder, engine=False) as server:
            rng = random.Random(7)
            base = f"{server.url}/v1/messages/batches"
            retrieve = _timed([f"{base}/{rng.choice(ids)}" for _ in range(calls)])
            pages = [f"{base}?limit=20"] + [
                f"{base}?limit=20&after_id={rng.choice(ids)}" for _ in range(calls - 1)
            ]
            listing = _timed(pages)
        rows.append(
            {
                "batches": count,
                "retrieve_p50_ms": round(harness.percentile(retrieve, 50), 2),
                "retrieve_p99_ms": round(harness.percentile(retrieve, 99), 2),
                "list_p50_ms": round(harness.percentile(listing, 50), 2),
                "list_p99_ms": round(harness.percentile(listing, 99), 2),
            }
        )
    return rows


def _timed(urls: list[str]) -> list[float]:
    times = []
    for url in urls:
        started = time.perf_counter()
        with urllib.request.urlopen(url) as response:
            response.read()
        times.append((time.perf_counter() - started) * 1000)
    return times


# -- 6. answer reuse -----------------------------------------------------------------------


def _upstream_calls(url: str) -> int:
    """Upstream calls batchd made, from its /metrics (the latency histogram's count)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=60) as response:
        text = response.read().decode()
    counts = re.findall(r"^batchd_upstream_latency_seconds_count\{[^}]*\} (\S+)$", text, re.M)
    return int(sum(float(c) for c in counts))


def reuse(counts: list[int], repeat: int, workdir: Path, latency: float) -> list[Row]:
    """A temperature-0 batch run, then submitted again on a backend with
    ``reuse_answers = "deterministic"``: the second run's upstream calls and its time from
    create to ended beside the first run's."""
    rows = []
    runs = iter(range(1_000_000))
    with harness.fake_upstream(latency) as upstream:
        for n in counts:
            requests = workload.requests(n)
            for request in requests:
                request["params"]["temperature"] = 0
            body = json.dumps({"requests": requests}, separators=(",", ":")).encode()
            backend = {
                "name": "upstream",
                "kind": "anthropic",
                "base_url": upstream,
                "models": ["claude-*"],
                "max_concurrency": 256,
                "adaptive_concurrency": False,
                "reuse_answers": "deterministic",
            }

            def run(body: bytes = body, backend: dict[str, Any] = backend) -> list[float]:
                with harness.batchd(workdir / f"reuse-{next(runs)}", backends=[backend]) as server:
                    figures = []
                    for _ in range(2):
                        batch = harness.post_json(f"{server.url}/v1/messages/batches", body)
                        started = time.perf_counter()
                        harness.wait_ended(server.url, batch["id"])
                        figures += [time.perf_counter() - started, _upstream_calls(server.url)]
                return figures

            first, first_calls, again, calls = harness.median_of(repeat, run, key=lambda r: r[2])
            rows.append(
                {
                    "requests": n,
                    "first_run_s": round(first, 3),
                    "resubmitted_s": round(again, 3),
                    "speedup": round(first / again, 1),
                    "first_run_upstream_calls": int(first_calls),
                    # of the second run's requests, those answered without an upstream call
                    "resubmitted_calls_saved_pct": round(
                        100 * (1 - (calls - first_calls) / first_calls), 1
                    ),
                }
            )
    return rows
