"""An ephemeral PostgreSQL server for the tests: initdb + pg_ctl into a temporary folder.

One server per test session (about 2 s to start), made for speed rather than safety
(fsync off). Each test gets a database of its own, copied from a migrated template. As root
the server runs as the ``postgres`` user, as the distribution's packages install it.
Where no server is installed the tests that need one are skipped, except in CI
(``CI=true``), where that fails the run: ``.ci/run`` installs the server first.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from batchd.store import open_store
from tests.support.cluster import free_port

TEMPLATE = "batchd_template"


def find_bin() -> Path | None:
    """The newest installed server's bin folder (Debian keeps them per major version)."""
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").exists():
            return folder
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def require_bin() -> Path:
    folder = find_bin()
    if folder is None:
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: in CI the PostgreSQL tests must run", pytrace=False)
        pytest.skip(message)
    return folder


@dataclass
class PostgresServer:
    port: int
    _ctl: list[str] = field(default_factory=list)  # pg_ctl -D DATA, as the server's user
    _options: str = ""
    _log: str = ""
    _names: Iterator[int] = field(default_factory=itertools.count)
    data: Path | None = None  # the data folder

    def _processes(self) -> list[int]:
        """The postmaster's pid first, then its children (the backends, the helpers)."""
        assert self.data is not None
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        return [postmaster, *map(int, children)]

    def pause(self) -> None:
        """SIGSTOP the server: it hangs, answering nothing and accepting no one (the kernel
        still completes TCP handshakes into the listen backlog)."""
        for pid in self._processes():  # the postmaster first: it starts no child after
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in reversed(self._processes()):
            os.kill(pid, signal.SIGCONT)

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    async def new_database(self, *, migrated: bool = True) -> str:
        """A fresh database (migrated unless told otherwise); its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        template = TEMPLATE if migrated else "template0"
        conn = await asyncpg.connect(self.url("postgres"))
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE {template}')
        finally:
            await conn.close()
        return self.url(name)

    def new_database_sync(self, *, migrated: bool = True) -> str:
        return asyncio.run(self.new_database(migrated=migrated))

    def start(self) -> None:
        """Start the server (again) on its port, and wait until it accepts connections."""
        subprocess.run(
            [*self._ctl, "-o", self._options, "-l", self._log, "-w", "start"],
            check=True,
            capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends every session, ``immediate`` is a crash."""
        subprocess.run([*self._ctl, "-m", mode, "-w", "stop"], check=False, capture_output=True)


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextmanager
def ephemeral_postgres(
    *, durable: bool = False, settings: Mapping[str, str] | None = None
) -> Iterator[PostgresServer]:
    """A new server in a temporary folder, with the migrated template database; ``durable``
    keeps fsync and synchronous commits on, as a deployment would (the benchmark), instead
    of the tests' unsafe fast settings; ``settings`` are more of the server's (``-c``)."""
    bin_dir = require_bin()
    with tempfile.TemporaryDirectory(prefix="batchd-pg-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # the server's user must reach its data folder
        data = root / "data"
        data.mkdir()
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(data, user.pw_uid, user.pw_gid)
            os.chown(root, user.pw_uid, user.pw_gid)
        subprocess.run(
            _as_postgres(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        port = free_port()
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        options += "".join(f" -c {name}={value}" for name, value in (settings or {}).items())
        server = PostgresServer(
            port,
            _ctl=_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data)]),
            _options=options,
            _log=str(root / "log"),
            data=data,
        )
        server.start()
        try:
            asyncio.run(_make_template(server))
            yield server
        finally:
            server.stop("immediate")


async def _make_template(server: PostgresServer) -> None:
    conn = await asyncpg.connect(server.url("postgres"))
    try:
        await conn.execute(f"CREATE DATABASE {TEMPLATE}")
    finally:
        await conn.close()
    store = await open_store(server.url(TEMPLATE), migrate=True)
    await store.close()
