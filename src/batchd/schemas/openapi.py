"""JSON Schemas of what goes over the wire, for the OpenAPI document (``api/openapi.py``).

Request bodies say what batchd checks, no more and no less: a create-batch envelope is
refused with 400 when it breaks ``CreateBatchRequest`` (``validation.parse_create_body``),
and Messages params are refused (``/v1/messages``) or become that request's ``errored``
result (in a batch) when they break ``MessageParams`` (``validation.Params``). Three rules
JSON Schema cannot say: custom_ids are unique within a batch; ``after_id`` and
``before_id`` are not given together; an integer is written as one (``5``, not ``5.0``).
"""

from __future__ import annotations

from typing import Any

from batchd.errors import API_STATUS

_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_COUNT = {"type": "integer", "minimum": 0}

RESPONSE_SCHEMAS: dict[str, Any] = {
    "ErrorResponse": {
        "type": "object",
        "required": ["type", "error", "request_id"],
        "additionalProperties": False,
        "properties": {
            "type": {"const": "error"},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "additionalProperties": False,
                "properties": {
                    "type": {"enum": list(API_STATUS)},
                    "message": {"type": "string", "minLength": 1},
                },
            },
            "request_id": {"type": ["string", "null"]},
        },
    },
    "MessageBatch": {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "id",
            "type",
            "processing_status",
            "request_counts",
            "ended_at",
            "created_at",
            "expires_at",
            "archived_at",
            "cancel_initiated_at",
            "results_url",
        ],
        "properties": {
            "id": {"type": "string", "pattern": "^msgbatch_"},
            "type": {"const": "message_batch"},
            "processing_status": {"enum": ["in_progress", "canceling", "ended"]},
            "request_counts": {
                "type": "object",
                "additionalProperties": False,
                "required": ["processing", "succeeded", "errored", "canceled", "expired"],
                "properties": {
                    "processing": _COUNT,
                    "succeeded": _COUNT,
                    "errored": _COUNT,
                    "canceled": _COUNT,
                    "expired": _COUNT,
                },
            },
            "ended_at": _NULLABLE_TIME,
            "created_at": {"type": "string", "format": "date-time"},
            "expires_at": {"type": "string", "format": "date-time"},
            "archived_at": _NULLABLE_TIME,
            "cancel_initiated_at": _NULLABLE_TIME,
            "results_url": {"type": ["string", "null"]},
        },
    },
    "MessageBatchList": {
        "type": "object",
        "additionalProperties": False,
        "required": ["data", "has_more", "first_id", "last_id"],
        "properties": {
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/MessageBatch"}},
            "has_more": {"type": "boolean"},
            "first_id": {"type": ["string", "null"]},
            "last_id": {"type": ["string", "null"]},
        },
    },
    "DeletedMessageBatch": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "type"],
        "properties": {"id": {"type": "string"}, "type": {"const": "message_batch_deleted"}},
    },
    "Message": {
        "type": "object",
        "required": ["id", "type", "role", "content", "model", "stop_reason", "usage"],
        "properties": {
            "id": {"type": "string"},
            "type": {"const": "message"},
            "role": {"const": "assistant"},
            "content": {"type": "array", "items": {"type": "object", "required": ["type"]}},
            "model": {"type": "string"},
            "stop_reason": {"type": ["string", "null"]},
            "usage": {"type": "object", "required": ["input_tokens", "output_tokens"]},
        },
    },
    "TokenCount": {
        "type": "object",
        "additionalProperties": False,
        "required": ["input_tokens"],
        "properties": {"input_tokens": _COUNT},
    },
    "ModelList": {
        "type": "object",
        "required": ["data", "has_more", "first_id", "last_id"],
        "properties": {
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "id", "display_name", "created_at"],
                    "properties": {"type": {"const": "model"}, "id": {"type": "string"}},
                },
            },
            "has_more": {"type": "boolean"},
            "first_id": {"type": ["string", "null"]},
            "last_id": {"type": ["string", "null"]},
        },
    },
    "BackendStatusList": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "type"],
                    "properties": {"name": {"type": "string"}, "type": {"const": "backend"}},
                },
            }
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
    },
}

_NULLABLE_UNIT = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
_BLOCKS = {"type": "array", "items": {"$ref": "#/components/schemas/ContentBlock"}}

REQUEST_SCHEMAS: dict[str, Any] = {
    "CreateBatchRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["requests"],
        "properties": {
            "requests": {
                "type": "array",
                "minItems": 1,
                "maxItems": 100_000,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["custom_id", "params"],
                    "properties": {
                        "custom_id": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
                        # any object: bad params become that request's errored result
                        "params": {"type": "object"},
                    },
                },
            }
        },
    },
    "ContentBlock": {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"type": "string"}},
        "if": {"properties": {"type": {"const": "text"}}},
        "then": {"required": ["text"], "properties": {"text": {"type": "string"}}},
    },
    "InputMessage": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"enum": ["user", "assistant", "system"]},
            "content": {"anyOf": [{"type": "string"}, _BLOCKS]},
        },
    },
    "MessageParams": {
        "type": "object",
        "required": ["model", "max_tokens", "messages"],
        "properties": {
            "model": {"type": "string"},
            "max_tokens": {"type": "integer", "minimum": 0},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {"$ref": "#/components/schemas/InputMessage"},
            },
            "system": {"anyOf": [{"type": "string"}, _BLOCKS, {"type": "null"}]},
            "stop_sequences": {"type": ["array", "null"], "items": {"type": "string"}},
            "temperature": _NULLABLE_UNIT,
            "top_p": _NULLABLE_UNIT,
            "top_k": {"type": ["integer", "null"], "minimum": 0},
            "stream": {"type": ["boolean", "null"]},
            "tools": {
                "type": ["array", "null"],
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                },
            },
            "tool_choice": {"type": ["object", "null"]},
            "metadata": {"type": ["object", "null"]},
        },
    },
    "CountTokensParams": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string"},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {"$ref": "#/components/schemas/InputMessage"},
            },
            "system": {"anyOf": [{"type": "string"}, _BLOCKS, {"type": "null"}]},
            "tools": {
                "type": ["array", "null"],
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                },
            },
        },
    },
}

SCHEMAS = {**RESPONSE_SCHEMAS, **REQUEST_SCHEMAS}
