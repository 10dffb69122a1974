"""The HTTP API: routes stay thin (parse -> use case -> serialise)."""

from batchd.api.app import create_app

__all__ = ["create_app"]
