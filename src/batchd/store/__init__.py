"""Storage: one Store over a dialect's driver. SQL lives here and nowhere else."""

from batchd.store.store import (
    IdempotencyKey,
    IdempotencyMismatch,
    NewRequest,
    Recorded,
    RequestFigures,
    SchemaMismatch,
    Store,
    Sweep,
)

__all__ = [
    "IdempotencyKey",
    "IdempotencyMismatch",
    "NewRequest",
    "Recorded",
    "RequestFigures",
    "SchemaMismatch",
    "Store",
    "Sweep",
    "open_store",
]

open_store = Store.open
