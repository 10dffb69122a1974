"""Backends: where a request's ``model`` is sent to become a Message."""

from batchd.backends.base import Backend
from batchd.backends.router import Router, build_backends

__all__ = ["Backend", "Router", "build_backends"]
