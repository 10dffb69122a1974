"""JSONL result lines, built by splicing bytes.

``custom_id`` matches ``[a-zA-Z0-9_-]{1,64}``, so it needs no JSON escaping; a stored
message is compact JSON already. Each line is one compact object with no newline.
"""

from __future__ import annotations

from typing import Any

import msgspec

_encode = msgspec.json.encode


def succeeded_line(custom_id: str, message: dict[str, Any]) -> bytes:
    return b'{"custom_id":"%s","result":{"type":"succeeded","message":%s}}' % (
        custom_id.encode(),
        _encode(message),
    )


def errored_line(custom_id: str, error_type: str, message: str) -> bytes:
    error = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": None,
    }
    return b'{"custom_id":"%s","result":{"type":"errored","error":%s}}' % (
        custom_id.encode(),
        _encode(error),
    )


def canceled_line(custom_id: str) -> bytes:
    return b'{"custom_id":"%s","result":{"type":"canceled"}}' % custom_id.encode()


def expired_line(custom_id: str) -> bytes:
    return b'{"custom_id":"%s","result":{"type":"expired"}}' % custom_id.encode()
