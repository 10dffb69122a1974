"""The engine: claims queued requests, runs them on their backends, records results."""

from batchd.engine.worker import Engine, EngineSettings

__all__ = ["Engine", "EngineSettings"]
