"""Storage: one Store over a dialect's driver. SQL lives here and nowhere else."""

from batchd.store.store import (
    Claimable,
    NewRequest,
    Recorded,
    RequestFigures,
    SchemaMismatch,
    Store,
    Sweep,
)

__all__ = [
    "Claimable",
    "NewRequest",
    "Recorded",
    "RequestFigures",
    "SchemaMismatch",
    "Store",
    "Sweep",
    "open_store",
]

open_store = Store.open
