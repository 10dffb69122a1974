"""Storage: one Store over a dialect's driver. SQL lives here and nowhere else."""

from batchd.store.base import (
    CancelOutcome,
    Claim,
    DeleteOutcome,
    NewRequest,
    Recorded,
    RequestFigures,
    ResultRecord,
    ResultRow,
    SchemaMismatch,
    Sweep,
)
from batchd.store.store import Store

__all__ = [
    "CancelOutcome",
    "Claim",
    "DeleteOutcome",
    "NewRequest",
    "Recorded",
    "RequestFigures",
    "ResultRecord",
    "ResultRow",
    "SchemaMismatch",
    "Store",
    "Sweep",
    "open_store",
]


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


async def open_store(url: str, *, migrate: bool | None = None) -> Store:
    """Open the store a database URL names: ``sqlite:///PATH`` or ``postgresql://...``.

    ``migrate=None`` is each dialect's default: SQLite applies pending migrations on open
    (zero set-up), PostgreSQL never does (run ``batchd migrate``) and refuses an older schema.
    """
    if url.startswith(POSTGRES_SCHEMES):
        from batchd.store.postgres import PostgresDriver

        return await Store.open(await PostgresDriver.open(url), migrate=bool(migrate))
    from batchd.store.sqlite import SQLiteDriver

    return await Store.open(await SQLiteDriver.open(url), migrate=migrate is not False)
