"""GET /v1/models on the wire: each model a backend serves, as the SDK's ``ModelInfo``."""

from __future__ import annotations

from typing import Literal

import msgspec

from batchd.schemas import Time


class ModelInfo(msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="model"):
    id: str
    display_name: str
    created_at: Time
    lifecycle: Literal["active", "deprecated", "retired"]


class ModelList(msgspec.Struct, forbid_unknown_fields=True):
    data: list[ModelInfo]
    has_more: bool
    first_id: str | None
    last_id: str | None
