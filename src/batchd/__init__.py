"""batchd: a self-hosted, Anthropic-compatible Message Batches server."""

__version__ = "0.1.0"
