"""One migration history for both dialects: applied in order, it gives the declared schema."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from batchd.store import SchemaMismatch, open_store
from batchd.store.postgres import SCHEMA_VERSION as PG_VERSION
from batchd.store.postgres import PostgresStore
from batchd.store.queries import load_schema
from batchd.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.support.postgres import PostgresServer

_PG_COLUMNS = """
SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity
FROM information_schema.columns
WHERE table_schema = 'public' AND table_name != 'schema_migrations' ORDER BY 1, 2
"""
_PG_INDEXES = """
SELECT indexname, indexdef FROM pg_indexes
WHERE schemaname = 'public' AND tablename != 'schema_migrations' ORDER BY 1
"""
_PG_CONSTRAINTS = """
SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text != 'schema_migrations'
ORDER BY 1, 2
"""


def _sqlite_schema(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master "
            "WHERE name NOT IN ('schema_migrations', 'sqlite_sequence') ORDER BY name"
        ).fetchall()
    # Whitespace is insignificant, also beside punctuation: ALTER TABLE ADD COLUMN writes
    # "last\n, added)" where the declared schema has "last,\n    added\n)".
    return [(*row[:3], re.sub(r"\s*([(),])\s*|\s+", _one_space, row[3] or "")) for row in rows]


def _one_space(match: re.Match[str]) -> str:
    return match[1] or " "


async def _pg_schema(url: str) -> list[list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        return [
            [tuple(r) for r in await conn.fetch(q)]
            for q in (_PG_COLUMNS, _PG_INDEXES, _PG_CONSTRAINTS)
        ]
    finally:
        await conn.close()


async def test_sqlite_migrations_give_the_declared_schema(tmp_path: Path) -> None:
    await (await SQLiteStore.open(f"sqlite:///{tmp_path}/m.db", migrate=True)).close()
    with closing(sqlite3.connect(tmp_path / "d.db")) as db:
        db.executescript(load_schema("sqlite"))
    assert _sqlite_schema(tmp_path / "m.db") == _sqlite_schema(tmp_path / "d.db")


async def test_postgres_migrations_give_the_declared_schema(postgres: PostgresServer) -> None:
    migrated = await postgres.new_database(migrated=False)
    await (await PostgresStore.open(migrated, migrate=True)).close()
    declared = await postgres.new_database(migrated=False)
    conn = await asyncpg.connect(declared)
    try:
        await conn.execute(load_schema("postgresql"))
    finally:
        await conn.close()
    schema = await _pg_schema(migrated)
    assert schema == await _pg_schema(declared)
    assert tuple(name for name, sql in schema[1] if "(backend, batch_seq, id)" in sql) == (
        "requests_queued",
    )


async def test_both_dialects_share_one_history() -> None:
    assert PG_VERSION == SCHEMA_VERSION


async def test_postgres_needs_an_explicit_migrate(postgres: PostgresServer) -> None:
    url = await postgres.new_database(migrated=False)
    with pytest.raises(SchemaMismatch, match="run `batchd migrate"):
        await open_store(url)
    for _ in range(2):  # the second run finds nothing to do
        await (await open_store(url, migrate=True)).close()
    store = await open_store(url)
    assert await store.count_active_keys() == 0
    await store.close()


async def test_postgres_refuses_a_newer_schema(postgres: PostgresServer) -> None:
    url = await postgres.new_database()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", PG_VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(SchemaMismatch, match="newer than this batchd"):
        await open_store(url, migrate=True)


async def test_sqlite_still_migrates_on_open_by_default(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/auto.db")
    assert isinstance(store, SQLiteStore)
    await store.close()


async def test_sqlite_refuses_an_older_schema_when_told_not_to_migrate(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "empty.db").close()
    with pytest.raises(SchemaMismatch, match="older than this batchd"):
        await open_store(f"sqlite:///{tmp_path}/empty.db", migrate=False)
