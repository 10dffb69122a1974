"""batchd's own operator routes on the wire: GET /status/backends and GET /healthz."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class FleetState(msgspec.Struct, forbid_unknown_fields=True):
    """This process's share of a backend's fleet_max_concurrency (``pacing.FleetShare``)."""

    max_concurrency: int
    slots: int  # held by this process
    in_use: int  # held by every process together, at this process's last look
    shared: bool  # False while the database cannot be reached: this process paces alone


class BackendState(msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="backend"):
    """One backend's pacing as it stands (``backends.pacing.BackendStatus``), by name."""

    name: str
    limit: int
    in_flight: int
    waiting: int
    retries: int
    last_error: dict[str, Any] | None
    # batchd's pacing signals: what set ``limit`` last (slow_start, growth, congestion,
    # latency, configured), and the budgets the upstream publishes in its headers.
    limit_source: str = "configured"
    budgets: dict[str, dict[str, float]] = msgspec.field(default_factory=dict)
    # batchd's own: on PostgreSQL with fleet_max_concurrency, this process's share of it
    fleet: FleetState | None = None


class BackendStateList(msgspec.Struct, forbid_unknown_fields=True):
    data: list[BackendState]


class Health(msgspec.Struct, forbid_unknown_fields=True):
    status: Literal["ok"]
