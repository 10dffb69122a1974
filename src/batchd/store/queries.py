"""Loading named SQL from a ``.sql`` file (``-- name: NAME`` starts each query)."""

from __future__ import annotations

import re
from importlib.resources import files

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.M)


def load_queries(filename: str) -> dict[str, str]:
    text = files("batchd.store").joinpath(filename).read_text(encoding="utf-8")
    parts = _NAME.split(text)[1:]
    return {name: body.strip() for name, body in zip(parts[::2], parts[1::2], strict=True)}


def load_migrations() -> list[tuple[int, str]]:
    """Every migration script, in order, as (version, SQL)."""
    folder = files("batchd.store").joinpath("migrations")
    scripts = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_\w+\.sql", entry.name)
        if match:
            scripts.append((int(match[1]), entry.read_text(encoding="utf-8")))
    return sorted(scripts)
