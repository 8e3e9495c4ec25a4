"""The baseline for bench/ingest.py: a bare aiohttp webhook that only verifies the signature.

Run as `python -m bench.bare_webhook PORT SECRET`. It stores nothing and dispatches nothing, so it is
the ceiling any real webhook server on this machine can reach.
"""

from __future__ import annotations

import sys

from aiohttp import web
from gidgethub import ValidationFailure
from gidgethub.sansio import validate_event


def make_app(secret: str) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            validate_event(body, signature=request.headers.get("X-Hub-Signature-256", ""), secret=secret)
        except ValidationFailure:
            return web.Response(status=401)
        return web.Response(status=202)

    app = web.Application(client_max_size=25 * 1024 * 1024 + 1)
    app.router.add_post("/webhook", receive)
    return app


if __name__ == "__main__":
    web.run_app(make_app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), print=None)
