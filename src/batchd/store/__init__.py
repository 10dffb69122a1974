"""Storage: one Store over a dialect's driver. SQL lives here and nowhere else."""

from batchd.store.store import (
    Claimable,
    DatabaseStats,
    IdempotencyKey,
    IdempotencyMismatch,
    NewFile,
    NewRequest,
    Purge,
    Recorded,
    RequestFigures,
    SchemaMismatch,
    Store,
    Sweep,
    Timeouts,
)

__all__ = [
    "Claimable",
    "DatabaseStats",
    "IdempotencyKey",
    "IdempotencyMismatch",
    "NewFile",
    "NewRequest",
    "Purge",
    "Recorded",
    "RequestFigures",
    "SchemaMismatch",
    "Store",
    "Sweep",
    "Timeouts",
    "open_store",
]

open_store = Store.open
