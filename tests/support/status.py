"""What /status/backends says of one backend, read through the SDK's client."""

from __future__ import annotations

from typing import Any

import anthropic


def backend_status(client: anthropic.Anthropic, name: str = "upstream") -> dict[str, Any]:
    status = client.get("/status/backends", cast_to=object)
    assert isinstance(status, dict)
    [backend] = [b for b in status["data"] if b["name"] == name]
    assert isinstance(backend, dict)
    return backend
