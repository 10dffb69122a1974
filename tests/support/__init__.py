"""Test support: a real uvicorn server on loopback, and fake upstreams."""
