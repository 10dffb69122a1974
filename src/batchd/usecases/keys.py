"""API keys and workspaces: minting keys, storing only their hashes, checking callers."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from batchd.domain import ApiKey
from batchd.errors import AuthenticationFailed
from batchd.ids import new_api_key, new_key_id
from batchd.store import Store

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE = "default"
_KEY_COUNT_TTL = 2.0  # seconds a cached "how many keys exist" stays fresh


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def create_key(store: Store, name: str, workspace: str) -> tuple[ApiKey, str]:
    """Store a new key's hash; return the key itself, which is shown once and never again."""
    secret = new_api_key()
    key = ApiKey(new_key_id(), name, workspace, time.time(), None)
    await store.create_key(key, hash_key(secret))
    return key, secret


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the key's workspace, and the key's id (``None`` in open mode)."""

    workspace: str
    key_id: str | None


class Authenticator:
    """Maps a presented key to its workspace.

    With no active keys, a server on a loopback address is open: any key (or none)
    maps to the default workspace. Anywhere else, no keys means no access.
    """

    def __init__(
        self, store: Store, *, allow_open: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._allow_open = allow_open
        self._clock = clock
        self._key_count: tuple[float, int] | None = None

    async def _active_keys(self) -> int:
        now = self._clock()
        if self._key_count is None or now - self._key_count[0] > _KEY_COUNT_TTL:
            self._key_count = (now, await self._store.count_active_keys())
        return self._key_count[1]

    async def workspace(self, presented: str | None) -> str:
        return (await self.caller(presented)).workspace

    async def caller(self, presented: str | None) -> Caller:
        if await self._active_keys() == 0:
            if self._allow_open:
                return Caller(DEFAULT_WORKSPACE, None)
            raise AuthenticationFailed("no API keys exist; create one with `batchd keys create`")
        if not presented:
            raise AuthenticationFailed(
                "missing API key: send it as `x-api-key` or `Authorization: Bearer`"
            )
        digest = hash_key(presented)
        found = await self._store.find_key(digest)
        # The lookup is by hash, so its timing says nothing about the key; the row it found
        # is still compared in constant time, whatever the database's index and collation did.
        if found is None or not hmac.compare_digest(found[1], digest):
            raise AuthenticationFailed("invalid API key")
        return Caller(found[0].workspace, found[0].id)
