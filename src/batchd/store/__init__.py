"""Storage: the Store protocol and its dialects. SQL lives here and nowhere else."""

from batchd.store.base import (
    CancelOutcome,
    Claim,
    DeleteOutcome,
    NewRequest,
    Recorded,
    RequestFigures,
    ResultRow,
    SchemaMismatch,
    Store,
    Sweep,
)

__all__ = [
    "CancelOutcome",
    "Claim",
    "DeleteOutcome",
    "NewRequest",
    "Recorded",
    "RequestFigures",
    "ResultRow",
    "SchemaMismatch",
    "Store",
    "Sweep",
    "open_store",
]


async def open_store(url: str) -> Store:
    """Open the store a database URL names, applying pending migrations."""
    from batchd.store.sqlite import SQLiteStore

    return await SQLiteStore.open(url, migrate=True)
