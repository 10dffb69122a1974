"""One migration history for both dialects: applied in order, it gives the declared schema."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from contextlib import closing
from importlib.resources import files
from pathlib import Path

import asyncpg
import pytest

from batchd.store import SchemaMismatch, Timeouts, open_store
from batchd.store.queries import load_migrations
from tests.support.postgres import PostgresServer

DECLARED = files("batchd.store").joinpath("schema.txt")
_PG_TYPES = {"bigint": "INTEGER", "text": "TEXT", "bytea": "BLOB", "double precision": "REAL"}
_PG_COLUMNS = """
SELECT table_name, column_name, data_type, is_nullable = 'NO', column_default
FROM information_schema.columns WHERE table_schema = 'public' AND table_name != 'schema_migrations'
"""
_PG_CONSTRAINTS = """
SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint
WHERE connamespace = 'public'::regnamespace
"""
_PG_INDEXES = """
SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'
AND indexname NOT IN (SELECT conname FROM pg_constraint)
"""


def _declared() -> list[str]:
    """The declared schema: one line per column and per index (store/schema.txt)."""
    lines = DECLARED.read_text(encoding="utf-8").splitlines()
    return sorted(line for line in lines if line and not line.startswith("#"))


def _column(table: str, name: str, type_: str, *flags: tuple[bool, str]) -> str:
    return " ".join([f"{table}.{name} {type_}", *(text for on, text in flags if on)])


def _sqlite_schema(path: Path) -> list[str]:
    """Each column and index as the declared schema writes it."""
    lines = []
    with closing(sqlite3.connect(path)) as db:
        tables = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN "
        for [table] in db.execute(tables + "('schema_migrations', 'sqlite_sequence')").fetchall():
            refs = {
                r[3]: f"{r[2]} ({r[4]})" for r in db.execute(f"PRAGMA foreign_key_list({table})")
            }
            unique = {
                db.execute(f"PRAGMA index_info({r[1]})").fetchone()[2]
                for r in db.execute(f"PRAGMA index_list({table})")
                if r[3] == "u"
            }
            for _, name, type_, notnull, default, pk in db.execute(f"PRAGMA table_info({table})"):
                lines.append(
                    _column(
                        table,
                        name,
                        type_,
                        (bool(notnull or pk), "NOT NULL"),
                        (default is not None, f"DEFAULT {default}"),
                        (bool(pk), "PRIMARY KEY"),
                        (name in unique, "UNIQUE"),
                        (name in refs, f"REFERENCES {refs.get(name)}"),
                    )
                )
        indexes = "SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        lines += [re.sub(r"\s+", " ", sql).removeprefix("CREATE ") for [sql] in db.execute(indexes)]
    return sorted(lines)


async def _pg_schema(url: str) -> list[str]:
    """The same lines from a PostgreSQL database."""
    conn = await asyncpg.connect(url)
    try:
        columns = await conn.fetch(_PG_COLUMNS)
        constraints = await conn.fetch(_PG_CONSTRAINTS)
        indexes = [r[0] for r in await conn.fetch(_PG_INDEXES)]
    finally:
        await conn.close()
    marks: dict[tuple[str, str], dict[str, str]] = {}
    for table, definition in constraints:
        constraint = r"(PRIMARY KEY|UNIQUE|FOREIGN KEY) \((\w+)\)(?: REFERENCES (\w+)\((\w+)\))?"
        match = re.fullmatch(constraint, definition)
        assert match is not None, definition
        kind, column, ref_table, ref_column = match.groups()
        marks.setdefault((table, column), {})[kind] = f"{ref_table} ({ref_column})"
    lines = []
    for table, name, type_, notnull, default in columns:
        mark = marks.get((table, name), {})
        lines.append(
            _column(
                table,
                name,
                _PG_TYPES[type_],
                (notnull, "NOT NULL"),
                # a text default reads back with its cast: '' is ''::text
                (default is not None, f"DEFAULT {str(default).removesuffix('::text')}"),
                ("PRIMARY KEY" in mark, "PRIMARY KEY"),
                ("UNIQUE" in mark, "UNIQUE"),
                ("FOREIGN KEY" in mark, f"REFERENCES {mark.get('FOREIGN KEY')}"),
            )
        )
    for index in indexes:
        index = re.sub(r"::text|public\.| USING btree", "", index).replace(" <> ", " != ")
        lines.append(re.sub(r" WHERE \((.*)\)$", r" WHERE \1", index).removeprefix("CREATE "))
    return sorted(lines)


async def test_sqlite_migrations_give_the_declared_schema(tmp_path: Path) -> None:
    await (await open_store(f"sqlite:///{tmp_path}/m.db", migrate=True)).close()
    assert _sqlite_schema(tmp_path / "m.db") == _declared()


async def test_postgres_migrations_give_the_declared_schema(postgres: PostgresServer) -> None:
    migrated = await postgres.new_database(migrated=False)
    await (await open_store(migrated, migrate=True)).close()
    assert await _pg_schema(migrated) == _declared()


async def test_both_dialects_share_one_history() -> None:
    versions = [v for v, _ in load_migrations("sqlite")]
    assert [v for v, _ in load_migrations("postgresql")] == versions


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
        newer = load_migrations("postgresql")[-1][0] + 1
        await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", newer)
    finally:
        await conn.close()
    with pytest.raises(SchemaMismatch, match="newer than this batchd"):
        await open_store(url, migrate=True)


async def test_sqlite_still_migrates_on_open_by_default(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/auto.db")
    assert store.driver.dialect == "sqlite"
    await store.close()


async def test_sqlite_refuses_an_older_schema_when_told_not_to_migrate(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "empty.db").close()
    with pytest.raises(SchemaMismatch, match="older than this batchd"):
        await open_store(f"sqlite:///{tmp_path}/empty.db", migrate=False)


async def test_postgres_migrate_waits_for_another_migration_past_the_statement_timeout(
    postgres: PostgresServer,
) -> None:
    """The statement timeout bounds each statement's answer, not the wait for the migration
    lock: a second `batchd migrate` waits for the first one, however long it takes."""
    url = await postgres.new_database(migrated=False)
    holder = await asyncpg.connect(url)
    try:
        await holder.execute("BEGIN")
        await holder.execute("SELECT pg_advisory_xact_lock(hashtext('batchd.migrate'))")
        timeouts = Timeouts(connect=5.0, statement=0.5)
        migrating = asyncio.create_task(open_store(url, migrate=True, timeouts=timeouts))
        waited = 0.0
        while not migrating.done() and waited < 4 * timeouts.statement:
            await asyncio.sleep(0.05)  # the waiter's age, read from the server below
            waited = await holder.fetchval(
                "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start)), 0)"
                " FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
        assert not migrating.done(), migrating.exception()
        await holder.execute("COMMIT")  # the first migration ends
        store = await migrating
    finally:
        await holder.close()
    assert await store.count_active_keys() == 0
    await store.close()
