"""API keys for tests, made the way `batchd keys create` makes them (without a subprocess)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from batchd.store import open_store
from batchd.usecases.keys import create_key


def make_keys(db: Path, workspaces: dict[str, str]) -> dict[str, str]:
    """Create one key per name, in the named workspace; return name -> the key itself."""

    async def run() -> dict[str, str]:
        store = await open_store(f"sqlite:///{db}")
        try:
            return {
                name: (await create_key(store, name, workspace))[1]
                for name, workspace in workspaces.items()
            }
        finally:
            await store.close()

    return asyncio.run(run())
