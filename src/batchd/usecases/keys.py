"""API keys and workspaces: minting keys, storing only their hashes, checking callers."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from batchd.domain import ApiKey
from batchd.errors import AuthenticationFailed, PermissionDenied
from batchd.ids import new_api_key, new_key_id
from batchd.store import Store

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE = "default"
_KEY_COUNT_TTL = 2.0  # seconds, in open mode, between looks for a newly created key


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """The name in a ``Host`` header, without its port: ``[::1]:80`` -> ``::1``."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if ":" in host_header else host_header


async def create_key(
    store: Store, name: str, workspace: str, *, operator: bool = False
) -> tuple[ApiKey, str]:
    """Store a new key's hash; return the key itself, which is shown once and never again."""
    secret = new_api_key()
    key = ApiKey(new_key_id(), name, workspace, time.time(), None, operator)
    await store.create_key(key, hash_key(secret))
    return key, secret


async def decide_open_mode(store: Store, host: str) -> bool:
    """Whether a server starting now is open (keyless): only with no active key in the
    database and a loopback bind address. Decided once, at start-up, and said loudly;
    revoking keys later never opens a running server."""
    if not is_loopback(host) or await store.count_active_keys() > 0:
        return False
    log.warning(
        "OPEN MODE: no API keys exist, so this server on %s serves anyone on this machine "
        "without a key, as the operator of workspace %r (requests naming a non-loopback "
        "Host, or sent by a web page of another site, are refused). Create a key with "
        "`batchd keys create NAME` to require keys.",
        host,
        DEFAULT_WORKSPACE,
    )
    return True


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the key's workspace, the key's id (``None`` in open mode), and
    whether it may read the server-wide routes (the local user may, in open mode)."""

    workspace: str
    key_id: str | None
    operator: bool = False


LOCAL_USER = Caller(DEFAULT_WORKSPACE, None, operator=True)


class Authenticator:
    """Maps a presented key to its caller.

    A server that started in open mode (see ``decide_open_mode``) maps every request from
    this machine to the local user, until a key is created: from then on keys are
    required, until the server restarts. Open mode serves loopback ``Host`` names only (a
    DNS-rebinding page names its own host) and no ``Origin`` of another host (a web page
    of another site).
    """

    def __init__(
        self, store: Store, *, open_mode: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._open = open_mode
        self._clock = clock
        self._checked_at: float | None = None

    async def _still_open(self) -> bool:
        now = self._clock()
        if self._open and (self._checked_at is None or now - self._checked_at > _KEY_COUNT_TTL):
            self._checked_at = now
            if await self._store.count_active_keys() > 0:
                self._open = False
                log.warning("an API key now exists: open mode is off, every call needs a key")
        return self._open

    async def workspace(self, presented: str | None) -> str:
        return (await self.caller(presented)).workspace

    async def caller(
        self, presented: str | None, *, host: str | None = None, origin: str | None = None
    ) -> Caller:
        """``host`` and ``origin``: the request's headers of those names, if sent."""
        if await self._still_open():
            _check_local(host, origin)
            return LOCAL_USER
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
        key = found[0]
        return Caller(key.workspace, key.id, key.operator)


def _check_local(host: str | None, origin: str | None) -> None:
    if host is not None and not is_loopback(_host_name(host)):
        raise PermissionDenied(
            f"this server has no API keys and serves this machine only: the Host {host!r} "
            "is not a loopback name (127.0.0.1, localhost, [::1])"
        )
    if origin is not None and not is_loopback(urlsplit(origin).hostname or ""):
        raise PermissionDenied(
            f"this server has no API keys and refuses calls from web pages of other sites "
            f"(Origin {origin!r})"
        )
