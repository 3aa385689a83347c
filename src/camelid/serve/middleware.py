"""The server's ASGI middleware: one access-log line per request and the bearer key on /v1."""

from __future__ import annotations

import hmac
import logging
import time

from camelid.serve.protocol import APIError, error_response

log = logging.getLogger("camelid.serve")


class AccessLog:
    """One line per request: method, path, status, prompt/completion tokens, latency (ms)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [0]
        state = scope.setdefault("state", {})

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            p, c = state.get("usage", (0, 0))
            log.info("%s %s %d prompt_tokens=%d completion_tokens=%d latency_ms=%.0f%s", scope["method"],
                     scope["path"], status[0] or 500, p, c, (time.perf_counter() - t0) * 1000,
                     " (client disconnected)" if state.get("disconnected") else "")


class BearerAuth:
    """`Authorization: Bearer KEY` on /v1/*; the page, its files and /health stay open (they hold no data)."""

    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1") and scope["method"] != "OPTIONS":
            headers = dict(scope["headers"])
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.key):
                err = APIError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'",
                               code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await error_response(err)(scope, receive, send)
        await self.app(scope, receive, send)
