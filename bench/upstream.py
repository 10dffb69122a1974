"""A fake Anthropic-compatible upstream for the fan-out benchmark (aiohttp, own process).

python -m bench.upstream PORT LATENCY_SECONDS
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

_MESSAGE = (
    b'{"id":"msg_bench","type":"message","role":"assistant","model":"claude-bench",'
    b'"content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,'
    b'"usage":{"input_tokens":10,"output_tokens":1}}'
)


def app(latency: float) -> web.Application:
    async def messages(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(latency)
        return web.Response(body=_MESSAGE, content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    application = web.Application()
    application.router.add_post("/v1/messages", messages)
    application.router.add_get("/healthz", healthz)
    return application


if __name__ == "__main__":
    web.run_app(
        app(float(sys.argv[2])), host="127.0.0.1", port=int(sys.argv[1]), print=None, backlog=4096
    )
