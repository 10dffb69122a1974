"""What each client command does, called by ``batchd.cli`` once its flags are parsed.

Each function runs its own event loop (``asyncio.run``) and raises ``ClientError``s,
which the CLI turns into a message and an exit code. Data goes to stdout, progress and
messages to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import sys
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import click
from rich.markup import escape

from batchd.client import openai_batches, results, views
from batchd.client.errors import ApiError, Interrupted
from batchd.client.http import Batch, BatchdClient
from batchd.client.inputs import Defaults, chunks, is_openai_file, read_requests
from batchd.client.progress import describe, tally, wait_for
from batchd.client.submit import MAX_BYTES
from batchd.client.submit import submit as create_batches

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True, slots=True)
class Server:
    url: str
    api_key: str | None

    def call(self, action: Callable[[BatchdClient], Awaitable[T]]) -> T:
        async def run() -> T:
            async with BatchdClient(self.url, self.api_key) as client:
                return await action(client)

        return asyncio.run(run())


@dataclass(frozen=True, slots=True)
class Waiting:
    out: Path | None = None
    only: Collection[str] = ()
    interval: float = 1.0


def _print_json(value: object) -> None:
    sys.stdout.write(views.to_json(value) + "\n")


def resume_command(server: Server, batch_ids: Sequence[str], waiting: Waiting) -> str:
    words = ["batchd", "batches", "wait", *batch_ids]
    if waiting.out is not None:
        words += ["--out", str(waiting.out)]
    for kind in waiting.only:
        words += ["--only", kind]
    if server.url != DEFAULT_URL:
        words += ["--url", server.url]
    return shlex.join(words)


def submit(
    server: Server,
    path: Path,
    defaults: Defaults,
    *,
    max_batch_requests: int,
    wait: bool,
    waiting: Waiting,
    headers: Mapping[str, str] | None = None,
) -> None:
    err = views.console(stderr=True)
    if is_openai_file(path):
        submit_openai(server, path, wait=wait, waiting=waiting)
        return
    requests = read_requests(path, defaults)
    if requests.generated:
        for line in views.generated_ids(requests.generated):
            err.print(line, markup=False, highlight=False)
    created = server.call(
        lambda client: create_batches(
            client, requests, max_requests=max_batch_requests, headers=headers
        )
    )
    batch_ids = [batch["id"] for batch in created]
    try:
        err.print(
            f"submitted {len(requests.encoded):,} requests as {len(batch_ids)} "
            f"batch{'es' if len(batch_ids) > 1 else ''}: {' '.join(batch_ids)}",
            markup=False,
            highlight=False,
        )
        if wait:
            wait_and_write(server, batch_ids, waiting)
            return
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C inside asyncio.run: either
        raise _interrupted(server, batch_ids, waiting) from None
    for batch_id in batch_ids:
        click.echo(batch_id)
    err.print(f"wait for the results with: {escape(resume_command(server, batch_ids, waiting))}")


def submit_openai(server: Server, path: Path, *, wait: bool, waiting: Waiting) -> None:
    """A file of OpenAI batch lines: one OpenAI batch per endpoint; results in its format."""
    err = views.console(stderr=True)
    found = openai_batches.read_openai_file(path)
    created = server.call(lambda client: openai_batches.create(client, found, path.name))
    batch_ids = [b["id"] for b in created]
    err.print(
        f"submitted {len(found.custom_ids):,} OpenAI requests as {len(batch_ids)} "
        f"batch{'es' if len(batch_ids) > 1 else ''}: {' '.join(batch_ids)}",
        markup=False,
        highlight=False,
    )
    if not wait:
        for batch_id in batch_ids:
            click.echo(batch_id)
        return

    async def run(client: BatchdClient) -> tuple[list[bytes], dict[str, int]]:
        ended = await openai_batches.wait(client, batch_ids, err, waiting.interval)
        return await openai_batches.results(client, ended, found.custom_ids)

    lines, counts = server.call(run)
    openai_batches.write(lines, waiting.out)
    err.print(
        f"ended: {counts['succeeded']:,} succeeded, {counts['failed']:,} failed; wrote "
        f"{len(lines):,} results to {escape(str(waiting.out or 'stdout'))}",
        highlight=False,
    )


def estimate(server: Server, path: Path, defaults: Defaults, *, max_batch_requests: int) -> None:
    """Count what the file would take, batch by batch as submit would split it; create
    nothing."""
    requests = read_requests(path, defaults)

    async def each(client: BatchdClient) -> list[dict[str, Any]]:
        split = chunks(requests, max_batch_requests, MAX_BYTES)
        return [await client.estimate(chunk) for chunk in split]

    views.console().print(views.estimate_table(server.call(each)))


def _interrupted(server: Server, batch_ids: Sequence[str], waiting: Waiting) -> Interrupted:
    kept = ""
    if waiting.out is not None and _followed(waiting.out).exists():
        kept = f"the results recorded so far are in {_followed(waiting.out)}; "
    return Interrupted(
        f"interrupted: {kept}the batches keep running on the server; resume waiting with\n  "
        + resume_command(server, batch_ids, waiting)
    )


def _followed(out: Path) -> Path:
    """Where a wait with --out writes the result lines as they are recorded."""
    return out.with_name(out.name + ".part")


def wait_and_write(server: Server, batch_ids: Sequence[str], waiting: Waiting) -> None:
    """Wait with a progress bar, then write the merged results (to --out, else stdout).
    With --out, the lines are written to OUT.part as they are recorded meanwhile, so that
    an interrupted wait keeps them; OUT itself is written, in input order, at the end."""
    err = views.console(stderr=True)
    try:
        if waiting.out is None:
            ended = server.call(lambda client: wait_for(client, batch_ids, err, waiting.interval))
        else:
            ended = _wait_following(server, batch_ids, waiting, _followed(waiting.out))
        err.print(f"ended: {describe(tally(ended))}")
        written = write_results(server, batch_ids, waiting.out, waiting.only)
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C inside asyncio.run: either
        raise _interrupted(server, batch_ids, waiting) from None
    if waiting.out is not None:
        _followed(waiting.out).unlink(missing_ok=True)
    where = waiting.out or "stdout"
    err.print(f"wrote {written:,} results to {escape(str(where))}", highlight=False)


def _wait_following(
    server: Server, batch_ids: Sequence[str], waiting: Waiting, followed: Path
) -> list[Batch]:
    err = views.console(stderr=True)
    with followed.open("wb") as stream:

        async def run(client: BatchdClient) -> list[Batch]:
            follower = results.Follower(client, batch_ids, stream, waiting.only)
            return await wait_for(client, batch_ids, err, waiting.interval, follower.pull)

        return server.call(run)


def write_results(
    server: Server, batch_ids: Sequence[str], out: Path | None, only: Collection[str]
) -> int:
    """Write JSONL; a file is written beside its name and renamed when complete."""

    def write_to(stream: IO[bytes]) -> int:
        counts = server.call(lambda client: results.write(client, batch_ids, stream, only))
        return counts.total()

    if out is None:
        return write_to(sys.stdout.buffer)
    partial = out.with_name(out.name + ".tmp")
    try:
        with partial.open("wb") as stream:
            written = write_to(stream)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return written


# -- batches ------------------------------------------------------------------------------


def list_batches(server: Server, limit: int, *, as_json: bool) -> None:
    batches, _ = server.call(lambda client: client.list_batches(limit))
    if as_json:
        _print_json(batches)
    else:
        views.console().print(views.batches_table(batches))


def show(server: Server, batch_id: str, *, as_json: bool) -> None:
    """A batch with batchd's own details and schedule, then its usage and cost."""

    async def all_of(
        client: BatchdClient,
    ) -> tuple[Batch, dict[str, Any], dict[str, object], Batch | None]:
        batch = await client.retrieve(batch_id)
        details, usage = await client.details(batch_id), await client.usage(batch_id)
        try:
            return batch, details, usage, await client.schedule(batch_id)
        except ApiError:  # a server without batchd's schedule route
            return batch, details, usage, None

    batch, details, usage, schedule = server.call(all_of)
    if as_json:
        own = {"batchd": details, "usage": usage}
        _print_json(
            batch | own if schedule is None else batch | own | {"batchd_schedule": schedule}
        )
        return
    out = views.console()
    out.print(views.batch_table(batch, details, schedule))
    out.print(views.usage_table(usage))


def cancel(server: Server, batch_id: str, *, as_json: bool) -> None:
    _show_batch(server.call(lambda client: client.cancel(batch_id)), as_json=as_json)


def delete(server: Server, batch_id: str, *, as_json: bool) -> None:
    deleted = server.call(lambda client: client.delete(batch_id))
    if as_json:
        _print_json(deleted)
    else:
        click.echo(f"deleted {deleted['id']}")


def _show_batch(batch: Batch, *, as_json: bool) -> None:
    if as_json:
        _print_json(batch)
    else:
        views.console().print(views.batch_table(batch))


def retry(
    server: Server, batch_id: str, types: Sequence[str], *, wait: bool, waiting: Waiting
) -> None:
    """A new batch of an ended batch's requests whose results are of ``types``."""
    err = views.console(stderr=True)
    batch = server.call(lambda client: client.retry(batch_id, types))
    err.print(f"retrying {batch['request_counts']['processing']:,} requests of {batch_id} "
              f"as {batch['id']}", markup=False, highlight=False)  # fmt: skip
    if wait:
        wait_and_write(server, [batch["id"]], waiting)
    else:
        click.echo(batch["id"])


def follow_results(
    server: Server, batch_id: str, out: Path | None, only: Collection[str], interval: float
) -> None:
    """Write a batch's result lines as they are recorded, until it has ended."""

    def follow_into(stream: IO[bytes]) -> int:
        async def run(client: BatchdClient) -> int:
            follower = results.Follower(client, [batch_id], stream, only)
            await results.follow(follower, client, batch_id, interval)
            return follower.written.total()

        return server.call(run)

    try:
        if out is None:
            written = follow_into(sys.stdout.buffer)
        else:
            with out.open("wb") as stream:
                written = follow_into(stream)
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise Interrupted(f"interrupted: the batch {batch_id} keeps running") from None
    click.echo(f"{written:,} results; {batch_id} has ended", err=True)


def merged_results(
    server: Server, batch_id: str, out: Path | None, only: Collection[str], *, as_json: bool
) -> None:
    """Each custom_id's latest result over the chain of retries ``batch_id`` is part of."""
    err = views.console(stderr=True)

    async def run(client: BatchdClient) -> list[bytes]:
        chain = await results.retry_chain(client, batch_id)
        ended = []
        for member in chain:
            if (await client.retrieve(member))["processing_status"] == "ended":
                ended.append(member)
            else:
                err.print(f"{member} has not ended: its results are left out", highlight=False)
        return [line async for line in results.latest(client, ended, only)]

    lines = server.call(run)
    if not (out is not None or as_json):
        views.console().print(views.results_table(results.summary(line) for line in lines))
        return
    with out.open("wb") if out is not None else contextlib.nullcontext(sys.stdout.buffer) as stream:
        stream.writelines(line + b"\n" for line in lines)
    if out is not None:
        click.echo(f"wrote {len(lines):,} results to {out}", err=True)


def show_results(
    server: Server, batch_id: str, out: Path | None, only: Collection[str], *, as_json: bool
) -> None:
    if out is not None or as_json:
        written = write_results(server, [batch_id], out, only)
        if out is not None:
            click.echo(f"wrote {written:,} results to {out}", err=True)
        return

    async def rows(client: BatchdClient) -> list[tuple[str, str, str]]:
        return [results.summary(line) async for line in results.merged(client, [batch_id], only)]

    views.console().print(views.results_table(server.call(rows)))
