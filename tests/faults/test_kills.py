"""SIGKILL of the server or a worker at seeded random points, round after round.

Each round runs one batch to a kill point (during create, mid-batch, during finalisation,
during cancel), SIGKILLs the API server (which runs an engine too) or the separate worker,
starts it again on the same database, and then holds batchd to what it told the client:
every acknowledged batch is still there and ends, each custom_id appears exactly once in
its results, the counts sum to the batch size, and a create that got no answer left either
nothing or the whole batch. ``BATCHD_FAULT_ROUNDS`` sets the rounds per store.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random

import anthropic
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from anthropic.types.messages import MessageBatch, MessageBatchRequestCounts
from anthropic.types.messages.batch_create_params import Request

from tests.conftest import wait_ended
from tests.faults.conftest import Database, Tally, rounds
from tests.support.cluster import Cluster
from tests.support.upstream import FakeUpstream, slow

POINTS = ("create", "mid-batch", "finalisation", "cancel")
HANG = 90.0  # seconds: a batch that has not ended by then is hung
CREATE_SIZE = 300
PADDING = "x" * 4000  # a system prompt that makes a create's body a few MB


@dataclass
class Ledger:
    """What batchd told the client, to hold it to after every restart."""

    accepted: dict[str, list[str]] = field(default_factory=dict)  # batch id -> custom ids
    cancel_sent: set[str] = field(default_factory=set)
    cancel_acknowledged: set[str] = field(default_factory=set)
    unanswered: list[list[str]] = field(default_factory=list)  # creates that got no answer
    create_seconds: float = 0.15  # how long the last answered create took: kills aim inside


def batch_requests(ids: list[str], *, padded: bool = False) -> list[Request]:
    requests: list[Request] = []
    for i in ids:
        params: MessageCreateParamsNonStreaming = {
            "model": "claude-faults",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": i}],
        }
        if padded:
            params["system"] = PADDING
        requests.append({"custom_id": i, "params": params})
    return requests


class Round:
    """One round: a batch driven to a kill point, the kill, the restart."""

    def __init__(
        self,
        cluster: Cluster,
        upstream: FakeUpstream,
        client: anthropic.Anthropic,
        ledger: Ledger,
        rng: Random,
    ) -> None:
        self.cluster = cluster
        self.upstream = upstream
        self.client = client
        self.ledger = ledger
        self.rng = rng

    def kill(self, target: str) -> None:
        if target == "server":
            self.cluster.kill_api()
        else:
            self.cluster.kill_worker(0)

    def restart(self, target: str) -> None:
        if target == "server":
            self.cluster.restart_api()
        else:
            self.cluster.restart_worker(0)

    def create(self, prefix: str, n: int) -> tuple[MessageBatch, list[str]]:
        ids = [f"{prefix}-{i}" for i in range(n)]
        batch = self.client.messages.batches.create(requests=batch_requests(ids))
        self.ledger.accepted[batch.id] = ids
        return batch, ids

    def wait_for(
        self, batch_id: str, done: Callable[[MessageBatchRequestCounts], bool]
    ) -> MessageBatch:
        deadline = time.monotonic() + HANG
        while True:
            seen = self.client.messages.batches.retrieve(batch_id)
            if seen.processing_status == "ended" or done(seen.request_counts):
                return seen
            assert time.monotonic() < deadline, f"{batch_id} hung: {seen.request_counts}"
            time.sleep(0.01)

    # -- the kill points: each answers whether the kill hit what it aimed at ----------------

    def during_create(self, prefix: str, _target: str) -> bool:
        ids = [f"{prefix}-{i}" for i in range(CREATE_SIZE)]
        killer = threading.Timer(
            self.rng.uniform(0.0, self.ledger.create_seconds), self.cluster.kill_api
        )
        started = time.monotonic()
        killer.start()
        try:
            batch = self.client.messages.batches.create(requests=batch_requests(ids, padded=True))
            self.ledger.create_seconds = time.monotonic() - started
        except anthropic.APIConnectionError:
            self.ledger.unanswered.append(ids)
            hit = True
        else:
            self.ledger.accepted[batch.id] = ids
            hit = False  # the answer came before the kill
        killer.join()
        self.cluster.kill_api()
        return hit

    def mid_batch(self, prefix: str, target: str) -> bool:
        n = self.rng.randint(150, 300)
        batch, _ = self.create(prefix, n)
        share = self.rng.uniform(0.2, 0.8)
        seen = self.wait_for(batch.id, lambda c: c.succeeded >= share * n)
        self.kill(target)
        return seen.processing_status != "ended"

    def finalisation(self, prefix: str, target: str) -> bool:
        n = self.rng.randint(100, 200)
        left = self.rng.randint(1, 5)
        tail = {f"{prefix}-{i}" for i in range(n - left, n)}  # the last to be claimed
        self.upstream.faults = lambda key, _attempt: slow(0.5) if key in tail else None
        batch, _ = self.create(prefix, n)
        seen = self.wait_for(batch.id, lambda c: c.processing <= left)
        self.kill(target)
        self.upstream.faults = None
        return seen.processing_status != "ended"

    def during_cancel(self, prefix: str, _target: str) -> bool:
        n = self.rng.randint(150, 300)
        batch, _ = self.create(prefix, n)
        share = self.rng.uniform(0.1, 0.5)
        self.wait_for(batch.id, lambda c: c.succeeded >= share * n)
        killer = threading.Timer(self.rng.uniform(0.0, 0.03), self.cluster.kill_api)
        killer.start()
        self.ledger.cancel_sent.add(batch.id)
        try:
            canceling = self.client.messages.batches.cancel(batch.id)
        except anthropic.APIConnectionError:
            hit = True
        else:
            assert canceling.processing_status in ("canceling", "ended")
            self.ledger.cancel_acknowledged.add(batch.id)
            hit = canceling.processing_status == "canceling"
        killer.join()
        self.cluster.kill_api()
        return hit


def check_ledger(client: anthropic.Anthropic, ledger: Ledger, where: str) -> None:
    """Every acknowledged batch is stored, ends, and has each custom_id once in its results;
    a create that got no answer stored nothing or the whole batch (adopted into the ledger)."""
    stored = {b.id for b in client.messages.batches.list(limit=100)}
    assert set(ledger.accepted) <= stored, f"{where}: lost {set(ledger.accepted) - stored}"
    for batch_id in stored - set(ledger.accepted):
        wait_ended(client, batch_id, timeout=HANG)
        ids = sorted(r.custom_id for r in client.messages.batches.results(batch_id))
        assert ids in [sorted(u) for u in ledger.unanswered], f"{where}: partial {batch_id}"
        ledger.accepted[batch_id] = ids
    for batch_id, ids in ledger.accepted.items():
        batch = wait_ended(client, batch_id, timeout=HANG)
        counts = batch.request_counts
        assert sum(counts.model_dump().values()) == len(ids), f"{where}: {batch_id} {counts}"
        results = list(client.messages.batches.results(batch_id))
        assert Counter(r.custom_id for r in results) == Counter(ids), f"{where}: {batch_id}"
        kinds = {r.result.type for r in results}
        allowed = {"succeeded", "canceled"} if batch_id in ledger.cancel_sent else {"succeeded"}
        assert kinds <= allowed, f"{where}: {batch_id} {kinds}"
        if batch_id in ledger.cancel_acknowledged:
            assert batch.cancel_initiated_at is not None, f"{where}: {batch_id} cancel lost"
        assert counts.canceled == sum(r.result.type == "canceled" for r in results)


def test_sigkill_rounds_lose_and_duplicate_nothing(
    cluster: Cluster, upstream: FakeUpstream, database: Database, rng: Random, tally: Tally
) -> None:
    n = rounds()
    plan = [p for _ in range(0, n, len(POINTS)) for p in rng.sample(POINTS, len(POINTS))][:n]
    ledger = Ledger()
    started = time.monotonic()
    with anthropic.Anthropic(
        base_url=cluster.url, api_key="sk-test", max_retries=0, timeout=30
    ) as client:
        for number, point in enumerate(plan):
            target = "server" if point in ("create", "cancel") else rng.choice(["server", "worker"])
            where = f"round {number}: {point} kill of the {target} on {database.kind}"
            r = Round(cluster, upstream, client, ledger, rng)
            kill = {
                "create": r.during_create,
                "mid-batch": r.mid_batch,
                "finalisation": r.finalisation,
                "cancel": r.during_cancel,
            }[point]
            hit = kill(f"r{number}", target)
            r.restart(target)
            check_ledger(client, ledger, where)
            assert database.mismatches() == [], where
            tally[f"kills: {target} {point}{'' if hit else ' (too late: answered or ended)'}"] += 1
    tally[f"kill rounds survived: {database.kind}"] += n
    tally[f"kill rounds seconds: {database.kind}"] += round(time.monotonic() - started)
    tally["batches checked after kills"] += len(ledger.accepted)
