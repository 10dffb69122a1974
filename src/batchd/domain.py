"""Domain objects and the pure rules of a batch's life.

A batch holds N requests. Each request moves ``queued -> running -> succeeded | errored``
(``running -> queued`` again when its lease is lost), or ``queued -> canceled | expired``.
The batch's counts are kept beside the rows in the same transactions, so the five
numbers always sum to N; ``processing`` is what is left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime
from enum import Enum, IntEnum, StrEnum
from typing import Any, overload

import msgspec

# One request's params as received: bytes, or a view into the create body (msgspec.Raw reads
# as a buffer, and the databases store it as it is), so a body is not copied on its way in.
RawParams = bytes | msgspec.Raw


class RequestState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    ERRORED = "errored"
    CANCELED = "canceled"
    EXPIRED = "expired"


FINAL_STATES = frozenset(
    {RequestState.SUCCEEDED, RequestState.ERRORED, RequestState.CANCELED, RequestState.EXPIRED}
)


class CancelOutcome(Enum):
    CANCELED = "canceled"  # this call started cancellation
    ALREADY_CANCELING = "already_canceling"
    ALREADY_ENDED = "already_ended"


class DeleteOutcome(Enum):
    DELETED = "deleted"
    NOT_FOUND = "not_found"
    NOT_ENDED = "not_ended"


class BatchDialect(StrEnum):
    """The API a batch was created through, which its results are written in."""

    ANTHROPIC = "anthropic"  # Message Batches
    OPENAI = "openai"  # OpenAI's Files + Batches


class FileRole(StrEnum):
    UPLOAD = "upload"  # uploaded by a client, its bytes stored in chunks
    OUTPUT = "output"  # a batch's succeeded lines, rendered from its requests
    ERROR = "error"  # a batch's failed (and unfinished) lines, rendered from its requests


class Priority(IntEnum):
    """A batch's priority (batchd's own, ``batchd-priority`` on create): higher goes first."""

    LOW = -1
    NORMAL = 0
    HIGH = 1


class ProcessingStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    CANCELING = "canceling"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class RequestCounts:
    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int

    @classmethod
    def from_totals(
        cls, total: int, succeeded: int, errored: int, canceled: int, expired: int
    ) -> RequestCounts:
        done = succeeded + errored + canceled + expired
        return cls(total - done, succeeded, errored, canceled, expired)

    @property
    def total(self) -> int:
        return self.processing + self.succeeded + self.errored + self.canceled + self.expired


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch as the use cases see it; times are UNIX seconds."""

    id: str
    seq: int
    workspace: str
    processing_status: ProcessingStatus
    counts: RequestCounts
    created_at: float
    expires_at: float
    ended_at: float | None
    cancel_initiated_at: float | None
    priority: int = 0  # batchd's own: Priority
    retry_of: str | None = None  # the batch this one retries (POST .../retry), if any
    reused: int = 0  # answers reused instead of calling the upstream (reuse_answers)
    dialect: BatchDialect = BatchDialect.ANTHROPIC  # the face the batch was created on
    dialect_fields: bytes | None = None  # that face's own fields (JSON), if it has any

    @classmethod
    def from_row(cls, row: Any) -> Batch:
        return cls(
            id=row["id"],
            seq=row["seq"],
            workspace=row["workspace"],
            processing_status=ProcessingStatus(row["processing_status"]),
            counts=RequestCounts.from_totals(
                row["total"], row["succeeded"], row["errored"], row["canceled"], row["expired"]
            ),
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            ended_at=row["ended_at"],
            cancel_initiated_at=row["cancel_initiated_at"],
            priority=row["priority"],
            retry_of=row["retry_of"],
            reused=row["reused"],
            dialect=BatchDialect(row["dialect"]),
            dialect_fields=row["dialect_fields"],
        )

    def projected_end(self, now: float) -> float | None:
        """When the batch ends at the rate it has finished requests so far; None before it
        has finished one (or once it has ended)."""
        counts = self.counts
        done = counts.total - counts.processing
        if self.processing_status is ProcessingStatus.ENDED or done == 0 or now <= self.created_at:
            return None
        rate = done / (now - self.created_at)
        return now + counts.processing / rate

    def at_risk(self, now: float) -> bool:
        """Will it miss its deadline at the current rate? Before any request has finished,
        once half of its window has passed."""
        if self.processing_status is ProcessingStatus.ENDED:
            return False
        projected = self.projected_end(now)
        if projected is None:
            return now - self.created_at > (self.expires_at - self.created_at) / 2
        return projected > self.expires_at

    def archived_at(self, retention: float, now: float) -> float | None:
        """Results are kept ``retention`` seconds after creation, then archived."""
        archived = self.created_at + retention
        return archived if now >= archived else None


@dataclass(frozen=True, slots=True)
class ClaimedRequest:
    """A request handed to one worker; ``attempt`` fences its result write."""

    id: int
    batch_seq: int
    custom_id: str
    params: bytes
    attempt: int
    endpoint: str | None = None  # an OpenAI request's endpoint; None: a Messages request

    @property
    def dialect(self) -> BatchDialect:
        return BatchDialect.ANTHROPIC if self.endpoint is None else BatchDialect.OPENAI


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """The tokens one answer took, as its ``usage`` reports them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
        )


NO_USAGE = TokenUsage()


@dataclass(frozen=True, slots=True)
class Outcome:
    """The final state of one claimed request and its JSONL result line; ``model`` and
    ``usage`` are counted into the batch's and the workspace's usage when it is recorded."""

    request: ClaimedRequest
    state: RequestState
    line: bytes
    _: KW_ONLY
    model: str = ""
    usage: TokenUsage = NO_USAGE
    answer_key: str | None = None  # its params' key, where its backend reuses answers
    reused: bool = False  # answered from a stored answer, without an upstream call


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file of the OpenAI face. A batch's output or error file is visible (``exists``)
    once its batch has ended with at least one line of its kind, until its ``expires_at``;
    its size is measured the first time it is read after that (``bytes`` None until then)."""

    id: str
    seq: int
    workspace: str
    purpose: str
    filename: str
    bytes: int | None
    lines: int
    created_at: float
    expires_at: float | None
    role: FileRole
    batch_seq: int | None
    exists: bool

    @classmethod
    def from_row(cls, row: Any) -> StoredFile:
        role = FileRole(row["role"])
        exists = role is FileRole.UPLOAD or (
            row["processing_status"] == ProcessingStatus.ENDED
            and (row["succeeded"] if role is FileRole.OUTPUT else row["failed"]) > 0
        )
        return cls(
            row["id"], row["seq"], row["workspace"], row["purpose"], row["filename"],
            row["bytes"], row["lines"], row["created_at"], row["expires_at"], role,
            row["batch_seq"], exists,
        )  # fmt: skip

    def visible(self, now: float) -> bool:
        """Shown, and not yet past its expires_at (then it is gone, as OpenAI's files)."""
        return self.exists and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    workspace: str
    created_at: float
    revoked_at: float | None
    operator: bool = False  # may read the server-wide routes: /metrics, /status/backends

    @classmethod
    def from_row(cls, row: Any) -> ApiKey:
        return cls(
            row["id"], row["name"], row["workspace"], row["created_at"], row["revoked_at"],
            bool(row["is_operator"]),
        )  # fmt: skip


@overload
def rfc3339(ts: float) -> str: ...
@overload
def rfc3339(ts: float | None) -> str | None: ...
def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- webhooks (batchd's own) ------------------------------------------------------------------


class WebhookEvent(StrEnum):
    BATCH_ENDED = "message_batch.ended"  # with the final request counts
    BATCH_CANCELED = "message_batch.canceled"  # a cancel was accepted
    BATCH_EXPIRED = "message_batch.expired"  # the batch passed its deadline unfinished
    # an OpenAI-face batch ended, named by its final status (OpenAI's event names)
    OPENAI_BATCH_COMPLETED = "batch.completed"
    OPENAI_BATCH_FAILED = "batch.failed"  # its input file was refused at create
    OPENAI_BATCH_CANCELLED = "batch.cancelled"
    OPENAI_BATCH_EXPIRED = "batch.expired"
    TEST = "webhook.test"  # `batchd webhooks test`: to one endpoint only


BATCH_EVENTS = (WebhookEvent.BATCH_ENDED, WebhookEvent.BATCH_CANCELED, WebhookEvent.BATCH_EXPIRED)
OPENAI_BATCH_EVENTS = (
    WebhookEvent.OPENAI_BATCH_COMPLETED,
    WebhookEvent.OPENAI_BATCH_FAILED,
    WebhookEvent.OPENAI_BATCH_CANCELLED,
    WebhookEvent.OPENAI_BATCH_EXPIRED,
)


class DeliveryState(StrEnum):
    PENDING = "pending"  # not yet accepted: due at next_attempt_at
    DELIVERED = "delivered"  # the endpoint answered 2xx
    FAILED = "failed"  # given up: 24 h of failures, or the endpoint was disabled


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    id: str
    workspace: str
    url: str
    events: tuple[str, ...]
    created_at: float
    failing_since: float | None
    disabled_at: float | None
    disabled_reason: str | None

    @classmethod
    def from_row(cls, row: Any) -> WebhookEndpoint:
        return cls(
            row["id"], row["workspace"], row["url"], tuple(row["events"].split()),
            row["created_at"], row["failing_since"], row["disabled_at"], row["disabled_reason"],
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event to one endpoint, and how sending it went."""

    id: int
    endpoint_id: str
    webhook_id: str  # the same on every attempt
    event_type: str
    created_at: float
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> Delivery:
        return cls(
            row["id"], row["endpoint_id"], row["webhook_id"], row["event_type"],
            row["created_at"], DeliveryState(row["state"]), row["attempts"],
            row["next_attempt_at"], row["last_status"], row["last_error"], row["finished_at"],
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery leased to one sender; ``attempt`` fences what it records."""

    id: int
    endpoint_id: str
    webhook_id: str
    event_type: str
    payload: bytes
    created_at: float
    attempt: int


# -- usage (batchd's own) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """One model's share of a batch's (or a day's) usage."""

    model: str
    requests: int
    tokens: TokenUsage


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """A workspace's usage of one model on one UTC day (``YYYY-MM-DD``); ``requests`` by
    result type."""

    day: str
    workspace: str
    model: str
    requests: dict[str, int]
    tokens: TokenUsage


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True, slots=True)
class SlotShare:
    """One process's share of a backend's fleet_max_concurrency, as its look decided it."""

    slots: int  # held in the database: its calls in flight may not exceed them
    usable: int  # the slots it may fill now (fewer than held while it gives some back)
    in_use: int  # held by every process together, its own included


def fleet_share(
    total: int, wanted: int, keep: int, others: Mapping[str, tuple[int, int]], holder: str
) -> SlotShare:
    """``holder``'s share of ``total`` slots, where it would use ``wanted`` and must keep
    ``keep`` (its calls in flight), beside ``others`` (holder: (slots held, slots wanted)).

    Each holder's fair share is ``total`` divided max-min among what every holder wants (one
    that wants little gets it, the rest is split evenly; ties by holder, so every holder
    computes the same split); a holder gets its share where the others leave it free, and
    keeps what is in flight even above it (it fills only its share until that drained)."""
    wants = sorted([(w, h) for h, (_, w) in others.items()] + [(wanted, holder)])
    left, share = total, 0
    for i, (want, name) in enumerate(wants):
        share = min(want, -(-left // (len(wants) - i)))  # an even split, rounded up
        if name == holder:
            break
        left -= share
    held = sum(slots for slots, _ in others.values())
    slots = max(keep, min(share, total - held))
    return SlotShare(slots, min(slots, share), held + slots)
