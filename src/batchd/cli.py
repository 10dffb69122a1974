"""The ``batchd`` command: flags -> Settings -> call in."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import uvicorn
from pydantic import ValidationError

from batchd.config import Settings, load_settings
from batchd.errors import BatchdError
from batchd.keys import create_key, is_loopback
from batchd.store import Store, open_store
from batchd.store.sqlite import SQLiteStore

T = TypeVar("T")

_db_option = click.option("--db", help="Database URL, e.g. sqlite:///batchd.db [BATCHD_DB]")
_config_option = click.option(
    "--config", type=click.Path(dir_okay=False, path_type=Path), help="TOML file [BATCHD_CONFIG]"
)


def _settings(**flags: Any) -> Settings:
    try:
        return load_settings(**flags)
    except (ValidationError, ValueError) as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from exc


def _with_store(url: str, action: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        store = await open_store(url)
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except BatchdError as exc:
        raise click.ClickException(exc.message) from exc


@click.group()
@click.version_option(package_name="batchd")
def main() -> None:
    """batchd: a self-hosted, Anthropic-compatible Message Batches server."""


@main.command()
@click.option("--host", help="Address to bind [default: 127.0.0.1]")
@click.option("--port", type=int, help="Port to bind [default: 8000]")
@_db_option
@_config_option
@click.option("--public-url", help="Origin used in results_url [default: the request's own]")
@click.option("--no-engine", is_flag=True, default=None, help="Serve the API only")
@click.option("--log-level", default="info", show_default=True)
def serve(
    host: str | None,
    port: int | None,
    db: str | None,
    config: Path | None,
    public_url: str | None,
    no_engine: bool | None,
    log_level: str,
) -> None:
    """Run the API server and the engine."""
    settings = _settings(
        host=host,
        port=port,
        db=db,
        config=config,
        public_url=public_url,
        engine=False if no_engine else None,
    )
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    keys = _with_store(settings.db, lambda store: store.count_active_keys())
    if keys == 0:
        if not is_loopback(settings.host):
            raise click.ClickException(
                f"refusing to serve on {settings.host} with no API keys: create one with "
                "`batchd keys create NAME`, or bind to a loopback address"
            )
        logging.getLogger("batchd").warning(
            "no API keys exist: the server is open to any key on %s", settings.host
        )
    from batchd.api import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=10,
    )


@main.command()
@_db_option
def migrate(db: str | None) -> None:
    """Apply pending schema migrations."""
    settings = _settings(db=db)

    async def run() -> None:
        store = await SQLiteStore.open(settings.db, migrate=True)
        await store.close()

    asyncio.run(run())
    click.echo(f"database {settings.db} is up to date")


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.argument("name")
@click.option("--workspace", default="default", show_default=True)
@_db_option
def keys_create(name: str, workspace: str, db: str | None) -> None:
    """Create a key; it is printed once and only its hash is stored."""
    settings = _settings(db=db)
    key, secret = _with_store(settings.db, lambda store: create_key(store, name, workspace))
    click.echo(f"created key {key.id} ({name}) in workspace {workspace}", err=True)
    click.echo(secret)


@keys.command("list")
@_db_option
def keys_list(db: str | None) -> None:
    """List keys (never the keys themselves)."""
    settings = _settings(db=db)
    for key in _with_store(settings.db, lambda store: store.list_keys()):
        state = "revoked" if key.revoked_at else "active"
        click.echo(f"{key.id}\t{key.name}\t{key.workspace}\t{state}")


@keys.command("revoke")
@click.argument("key_id")
@_db_option
def keys_revoke(key_id: str, db: str | None) -> None:
    """Revoke a key by its id."""
    settings = _settings(db=db)
    import time

    if not _with_store(settings.db, lambda store: store.revoke_key(key_id, time.time())):
        raise click.ClickException(f"no active key with id {key_id}")
    click.echo(f"revoked {key_id}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
