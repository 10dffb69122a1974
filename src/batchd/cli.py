"""The ``batchd`` command: flags -> Settings -> call in."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from batchd.client import commands, views
from batchd.client.errors import ClientError
from batchd.client.inputs import DEFAULT_MAX_TOKENS, Defaults
from batchd.client.results import RESULT_TYPES
from batchd.client.submit import MAX_REQUESTS
from batchd.config import Settings, load_settings
from batchd.domain import rfc3339
from batchd.errors import BatchdError
from batchd.store import Store, open_store
from batchd.usecases.keys import create_key, is_loopback
from batchd.usecases.webhooks import EVENT_TYPES, WebhookService

T = TypeVar("T")

_db_option = click.option(
    "--db",
    help="Database URL: sqlite:///batchd.db or postgresql://user@host:port/db [BATCHD_DB]",
)
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


def _run(role: Coroutine[Any, Any, None]) -> None:
    """Run a process role of ``batchd.runtime`` until it stops; a failure exits non-zero."""
    from batchd.runtime import ProcessFailed, run

    try:
        run(role)
    except BatchdError as exc:
        raise click.ClickException(exc.message) from exc
    except ProcessFailed as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
@click.version_option(package_name="batchd")
def main() -> None:
    """batchd: a self-hosted, Anthropic-compatible Message Batches server."""


def _configure_logging(log_level: str) -> None:
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


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
    _configure_logging(log_level)
    keys = _with_store(settings.db, lambda store: store.count_active_keys())
    if keys == 0 and not is_loopback(settings.host):
        raise click.ClickException(
            f"refusing to serve on {settings.host} with no API keys: create one with "
            "`batchd keys create NAME`, or bind to a loopback address"
        )
    from batchd import runtime  # here: the client commands need neither server nor engine

    _run(runtime.serve(settings, log_level=log_level))


@main.command()
@_db_option
def migrate(db: str | None) -> None:
    """Apply pending schema migrations."""
    settings = _settings(db=db)

    async def run() -> bool:
        store = await open_store(settings.db, migrate=True)
        try:
            return await store.enable_reclaim()
        finally:
            await store.close()

    try:
        converted = asyncio.run(run())
    except BatchdError as exc:
        raise click.ClickException(exc.message) from exc
    if converted:
        click.echo("converted the file to auto_vacuum = INCREMENTAL (a one-time VACUUM)")
    click.echo(f"database {settings.db} is up to date")


@main.command()
@_db_option
@_config_option
@click.option("--log-level", default="info", show_default=True)
def worker(db: str | None, config: Path | None, log_level: str) -> None:
    """Run the engine only (no HTTP): one of many workers on a shared PostgreSQL database."""
    settings = _settings(db=db, config=config)
    _configure_logging(log_level)
    from batchd import runtime

    _run(runtime.work(settings))


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.argument("name")
@click.option("--workspace", default="default", show_default=True)
@click.option(
    "--operator",
    is_flag=True,
    help="May read /metrics and /status/backends (every workspace's figures)",
)
@_db_option
def keys_create(name: str, workspace: str, operator: bool, db: str | None) -> None:
    """Create a key; it is printed once and only its hash is stored."""
    settings = _settings(db=db)
    key, secret = _with_store(
        settings.db, lambda store: create_key(store, name, workspace, operator=operator)
    )
    scope = " (operator)" if operator else ""
    click.echo(f"created key {key.id} ({name}) in workspace {workspace}{scope}", err=True)
    click.echo(secret)


@keys.command("list")
@_db_option
def keys_list(db: str | None) -> None:
    """List keys (never the keys themselves)."""
    settings = _settings(db=db)
    for key in _with_store(settings.db, lambda store: store.list_keys()):
        state = "revoked" if key.revoked_at else "active"
        scope = "\toperator" if key.operator else ""
        click.echo(f"{key.id}\t{key.name}\t{key.workspace}\t{state}{scope}")


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


# -- webhooks (batchd's own): on the database, like keys ----------------------------------------


def _with_webhooks(settings: Settings, action: Callable[[WebhookService], Awaitable[T]]) -> T:
    import time

    allow = settings.webhook_allow_private_urls
    return _with_store(
        settings.db,
        lambda store: action(WebhookService(store, time.time, allow_private_urls=allow)),
    )


@main.group()
def webhooks() -> None:
    """Webhook endpoints: signed events when a workspace's batches end (batchd's own)."""


@webhooks.command("create")
@click.argument("url")
@click.option(
    "--events",
    multiple=True,
    help=f"Event types, repeatable or comma-separated [default: all of {', '.join(EVENT_TYPES)}]",
)
@click.option("--workspace", default="default", show_default=True)
@_db_option
@_config_option
def webhooks_create(
    url: str, events: tuple[str, ...], workspace: str, db: str | None, config: Path | None
) -> None:
    """Create an endpoint; prints its id and its signing secret (shown once)."""
    settings = _settings(db=db, config=config)
    wanted = [e.strip() for item in events for e in item.split(",") if e.strip()]
    endpoint, secret = _with_webhooks(settings, lambda w: w.create(workspace, url, wanted))
    click.echo(
        f"created webhook endpoint {endpoint.id} in workspace {workspace} for "
        f"{', '.join(endpoint.events)}; its signing secret is shown once:",
        err=True,
    )
    click.echo(endpoint.id)
    click.echo(secret)


@webhooks.command("list")
@click.option("--workspace", help="Only this workspace's endpoints")
@_db_option
def webhooks_list(workspace: str | None, db: str | None) -> None:
    """List endpoints (never their secrets)."""
    settings = _settings(db=db)
    for e in _with_webhooks(settings, lambda w: w.endpoints(workspace)):
        state = f"disabled: {e.disabled_reason}" if e.disabled_at else "active"
        click.echo(f"{e.id}\t{e.workspace}\t{e.url}\t{','.join(e.events)}\t{state}")


@webhooks.command("delete")
@click.argument("endpoint_id")
@_db_option
def webhooks_delete(endpoint_id: str, db: str | None) -> None:
    """Delete an endpoint and its deliveries."""
    _with_webhooks(_settings(db=db), lambda w: w.delete(None, endpoint_id))
    click.echo(f"deleted {endpoint_id}")


@webhooks.command("test")
@click.argument("endpoint_id")
@_db_option
def webhooks_test(endpoint_id: str, db: str | None) -> None:
    """Queue a webhook.test event to the endpoint (a running engine sends it)."""
    webhook_id = _with_webhooks(_settings(db=db), lambda w: w.test(None, endpoint_id))
    click.echo(f"queued webhook.test {webhook_id} to {endpoint_id}")


@webhooks.command("deliveries")
@click.argument("endpoint_id")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@_db_option
def webhooks_deliveries(endpoint_id: str, limit: int, db: str | None) -> None:
    """An endpoint's deliveries, newest first, and how they went."""
    settings = _settings(db=db)
    deliveries = _with_webhooks(settings, lambda w: w.deliveries(None, endpoint_id, limit))
    for d in deliveries:
        outcome = d.last_error or (f"HTTP {d.last_status}" if d.last_status else "")
        click.echo(
            f"{d.webhook_id}\t{d.event_type}\t{d.state}\tattempts={d.attempts}\t"
            f"{rfc3339(d.created_at)}\t{outcome}"
        )


@main.command()
@click.option("--workspace", help="Only this workspace [default: every workspace]")
@click.option("--since", help="First UTC day, YYYY-MM-DD [default: 30 days ago]")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts")
@_db_option
@_config_option
def usage(
    workspace: str | None, since: str | None, as_json: bool, db: str | None, config: Path | None
) -> None:
    """Tokens, requests and cost per UTC day, workspace and model (batchd's own)."""
    import time

    from batchd.runtime import prices_of
    from batchd.usecases.usage import since_day

    settings = _settings(db=db, config=config)
    prices = prices_of(settings)
    try:
        first = since_day(since, time.time())
    except BatchdError as exc:
        raise click.ClickException(exc.message) from exc
    days = _with_store(settings.db, lambda store: store.daily_usage(workspace, first))
    priced = [(d, prices.cost(d.model, d.tokens) if prices else None) for d in days]
    if as_json:
        from batchd.schemas.usage import daily_to_wire

        wire = [daily_to_wire(d, cost, prices.currency) for d, cost in priced]
        click.echo(views.to_json(wire))
        return
    currency = prices.currency if prices else None
    views.console().print(views.daily_usage_table(priced, currency))


@main.group()
def db() -> None:
    """Look into the database and back it up."""


@db.command("stats")
@_db_option
def db_stats(db: str | None) -> None:
    """Print what the database holds: batches, requests by state, bytes."""
    settings = _settings(db=db)
    stats = _with_store(settings.db, lambda store: store.stats())
    batches = sum(stats.batches.values())
    click.echo(f"batches\t{batches}")
    for status, n in sorted(stats.batches.items()):
        click.echo(f"batches {status}\t{n}")
    click.echo(f"batches purged (requests deleted after retention)\t{stats.purged_batches}")
    click.echo(f"requests\t{sum(stats.requests.values())}")
    for state, n in sorted(stats.requests.items()):
        click.echo(f"requests {state}\t{n}")
    click.echo(f"bytes used\t{stats.used_bytes}")
    if stats.free_bytes is not None:
        click.echo(f"bytes free (not yet given back)\t{stats.free_bytes}")
    for path, size in stats.files.items():
        click.echo(f"file {path}\t{size}")


@db.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@_db_option
def db_backup(path: Path, db: str | None) -> None:
    """Copy a live SQLite database to PATH, consistently, while batches run."""
    settings = _settings(db=db)
    try:
        _with_store(settings.db, lambda store: store.backup(str(path)))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"backed up {settings.db} to {path}")


# -- the client: talking to a server over HTTP ------------------------------------------------


def _client_command(command: Callable[..., None]) -> Callable[..., None]:
    """Add --url and --api-key; turn client errors into a message and an exit code."""

    @functools.wraps(command)
    def run(url: str, api_key: str | None, **kwargs: Any) -> None:
        try:
            command(commands.Server(url, api_key), **kwargs)
        except ClientError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            raise SystemExit(exc.exit_code) from None

    run = click.option(
        "--api-key", envvar="BATCHD_API_KEY", help="API key (sent as x-api-key) [BATCHD_API_KEY]"
    )(run)
    return click.option(
        "--url",
        envvar="BATCHD_URL",
        default=commands.DEFAULT_URL,
        show_default=True,
        help="The batchd server [BATCHD_URL]",
    )(run)


_json_flag = click.option("--json", "as_json", is_flag=True, help="JSON for scripts")
_out_option = click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results (JSONL) here"
)
_only_option = click.option(
    "--only",
    multiple=True,
    type=click.Choice(RESULT_TYPES),
    help="Keep only results of this type (repeatable)",
)
_interval_option = click.option("--interval", type=float, default=1.0, hidden=True)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", help="Model for plain-text prompts and params without one")
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_TOKENS,
    show_default=True,
    help="max_tokens for params without one",
)
@click.option(
    "--wait", is_flag=True, help="Show progress until the batches end, then write results"
)
@click.option(
    "--estimate",
    is_flag=True,
    help="Print the input tokens, the output bound and the cost; create nothing",
)
@_out_option
@_only_option
@click.option(
    "--max-batch-requests",
    type=click.IntRange(1, MAX_REQUESTS),
    default=MAX_REQUESTS,
    show_default=True,
    help="Split into batches of at most this many requests",
)
@click.option(
    "--priority",
    type=click.Choice(["low", "normal", "high"]),
    help="batchd's own: served before lower priorities (header batchd-priority)",
)
@click.option(
    "--completion-window",
    metavar="WINDOW",
    help="batchd's own: the deadline, 1h to 7d (e.g. 1h, 12h, 3d); default 24h",
)
@_interval_option
@_client_command
def submit(
    server: commands.Server,
    file: Path,
    model: str | None,
    max_tokens: int,
    wait: bool,
    estimate: bool,
    out: Path | None,
    only: tuple[str, ...],
    max_batch_requests: int,
    priority: str | None,
    completion_window: str | None,
    interval: float,
) -> None:
    """Submit a JSONL file of requests as batches.

    Each line is a batch request {"custom_id", "params"}, bare Messages params (custom ids
    are generated from line numbers), or a plain-text prompt for --model.
    """
    if estimate:
        commands.estimate(
            server, file, Defaults(model, max_tokens), max_batch_requests=max_batch_requests
        )
        return
    commands.submit(
        server,
        file,
        Defaults(model, max_tokens),
        max_batch_requests=max_batch_requests,
        wait=wait,
        waiting=commands.Waiting(out, only, interval),
        headers={
            name: value
            for name, value in (
                ("batchd-priority", priority),
                ("batchd-completion-window", completion_window),
            )
            if value is not None
        },
    )


@main.group()
def batches() -> None:
    """List, inspect, wait for, cancel and delete batches on a server."""


@batches.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@_json_flag
@_client_command
def batches_list(server: commands.Server, limit: int, as_json: bool) -> None:
    """The newest batches first."""
    commands.list_batches(server, limit, as_json=as_json)


@batches.command("show")
@click.argument("batch_id")
@_json_flag
@_client_command
def batches_show(server: commands.Server, batch_id: str, as_json: bool) -> None:
    """One batch: status, times and request counts."""
    commands.show(server, batch_id, as_json=as_json)


@batches.command("cancel")
@click.argument("batch_id")
@_json_flag
@_client_command
def batches_cancel(server: commands.Server, batch_id: str, as_json: bool) -> None:
    """Cancel a batch: its queued requests will not run."""
    commands.cancel(server, batch_id, as_json=as_json)


@batches.command("delete")
@click.argument("batch_id")
@_json_flag
@_client_command
def batches_delete(server: commands.Server, batch_id: str, as_json: bool) -> None:
    """Delete an ended batch and its results."""
    commands.delete(server, batch_id, as_json=as_json)


@batches.command("results")
@click.argument("batch_id")
@_out_option
@_only_option
@click.option("--json", "as_json", is_flag=True, help="The JSONL lines themselves")
@click.option(
    "--follow", is_flag=True, help="JSONL lines as they are recorded, until the batch ends"
)
@click.option(
    "--merged", is_flag=True, help="Each custom_id's latest result over the batch's retries"
)
@_interval_option
@_client_command
def batches_results(
    server: commands.Server,
    batch_id: str,
    out: Path | None,
    only: tuple[str, ...],
    as_json: bool,
    follow: bool,
    merged: bool,
    interval: float,
) -> None:
    """The results of an ended batch: a table, JSONL (--json) or a file (--out).

    --follow writes them as they are recorded while the batch runs; --merged gives, over
    the chain of retries the batch is part of, each custom_id's latest result once."""
    if follow and merged:
        raise click.UsageError("--follow and --merged cannot be used together")
    if follow:
        commands.follow_results(server, batch_id, out, only, interval)
    elif merged:
        commands.merged_results(server, batch_id, out, only, as_json=as_json)
    else:
        commands.show_results(server, batch_id, out, only, as_json=as_json)


@batches.command("retry")
@click.argument("batch_id")
@click.option(
    "--types",
    multiple=True,
    type=click.Choice(("errored", "expired", "canceled")),
    help="Retry the requests with results of this type (repeatable) [default: errored, expired]",
)
@click.option("--wait", is_flag=True, help="Show progress until the retry ends, then its results")
@_out_option
@_only_option
@_interval_option
@_client_command
def batches_retry(
    server: commands.Server,
    batch_id: str,
    types: tuple[str, ...],
    wait: bool,
    out: Path | None,
    only: tuple[str, ...],
    interval: float,
) -> None:
    """A new batch of an ended batch's failed requests (batchd's own extension)."""
    commands.retry(
        server, batch_id, types, wait=wait, waiting=commands.Waiting(out, only, interval)
    )


@batches.command("wait")
@click.argument("batch_ids", nargs=-1, required=True)
@_out_option
@_only_option
@_interval_option
@_client_command
def batches_wait(
    server: commands.Server,
    batch_ids: tuple[str, ...],
    out: Path | None,
    only: tuple[str, ...],
    interval: float,
) -> None:
    """Wait for batches with a progress bar, then write their merged results
    (to --out, else stdout)."""
    commands.wait_and_write(server, batch_ids, commands.Waiting(out, only, interval))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
