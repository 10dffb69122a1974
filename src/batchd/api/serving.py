"""What uvicorn is given to serve batchd, and the process limits it needs.

``serving_options`` is spread into ``uvicorn.Config`` (or ``uvicorn.run``) wherever the API
is served. It raises the open-file limit as far as the system allows (the soft limit to the
hard one: a busy server's sockets, database files and upstream connections each take a
descriptor, and the usual soft limit is 1,024), and caps the connections served at once
(``max_connections``, kept below the open-file limit so that the database and the upstreams
always find a descriptor); a request over the cap is answered 503 at once.
"""

from __future__ import annotations

import logging
import resource
from typing import Any

from batchd.api.protocol import http_protocol
from batchd.config import Settings

log = logging.getLogger(__name__)
# Descriptors kept free of client connections: database files, upstream connections, logs.
RESERVED_FILES = 256


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or (wanted != resource.RLIM_INFINITY and soft >= wanted):
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:  # a container may forbid it: serve with what there is
        log.warning("could not raise the open-file limit from %d: %s", soft, exc)
        return soft
    return wanted


def connection_cap(settings: Settings, open_files: int) -> int:
    """The most connections served at once: the setting, within the open-file limit."""
    return max(1, min(settings.max_connections, open_files - RESERVED_FILES))


def serving_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``; raises the open-file limit on the way."""
    cap = connection_cap(settings, raise_open_file_limit())
    return {"http": http_protocol(settings), "limit_concurrency": cap}
