"""What every camelid web app (`camelid serve`, `camelid arena`) needs to be safe in a browser and against bad bodies.

- `Guard`, an ASGI middleware: the Host allow-list (a loopback server answers only to loopback names, so a DNS
  rebinding page cannot reach it), the Origin check (a cross-origin request is refused unless its origin is allowed;
  a `text/plain` POST needs no preflight, so CORS alone does not stop it) and CORS for the allowed origins.
- `read_json`: a request body read with a size limit (413), the JSON content type (415), bounded nesting depth, and
  no lone surrogates, NaN or infinities (400): whatever a client sends, the answer is a 4xx, never a 5xx.
- `RateLimit`: a token bucket per client.
No web framework is imported here: errors are `HTTPProblem`s, each app renders them in its own error shape.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from typing import Any, Awaitable, Callable, Iterable

MAX_BODY = 8 * 1024 * 1024  # bytes; a chat request near a 128k-token context is about 0.5 MiB
MAX_DEPTH = 64  # nesting of objects and arrays; the deepest OpenAI request shape (a JSON schema) stays far below
DRAIN_LIMIT = 64 * 1024 * 1024  # an over-long body is read and discarded up to this, so the connection stays usable


class HTTPProblem(Exception):
    """A request the client must fix (or a refusal): status, one-line message, machine-readable code."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}


# ------------------------------------------------------------------------------------------- hosts and origins


def is_loopback_host(host: str) -> bool:
    """localhost, *.localhost, 127.0.0.0/8 and ::1 (what a loopback bind can legitimately be called)."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def origin_of(scheme: str, host_header: str) -> str:
    return f"{scheme}://{host_header.strip().lower()}"


class Guard:
    """Host allow-list, Origin check and CORS in front of an ASGI app.

    `allowed_hosts`: None accepts any Host; otherwise loopback names plus these names (or a function returning
    either, asked per request: an app learns its bind address only when it starts). `cors_origins`: origins whose
    cross-origin requests are allowed and get CORS headers ("*": any). Same-origin requests (the page served by the
    app) always pass. `problem(e)` renders an HTTPProblem as an ASGI app in the caller's error shape."""

    def __init__(self, app, *, allowed_hosts: Iterable[str] | Callable[[], Iterable[str] | None] | None,
                 cors_origins: Iterable[str] = (),
                 problem: Callable[[HTTPProblem], Callable[..., Awaitable[None]]],
                 allow_methods: str = "GET, POST, OPTIONS", max_age: int = 600):
        self.app = app
        self.hosts = allowed_hosts if callable(allowed_hosts) else (
            None if allowed_hosts is None else list(allowed_hosts))
        self.origins = {o.rstrip("/").lower() for o in cors_origins}
        self.problem, self.allow_methods, self.max_age = problem, allow_methods, max_age

    def host_allowed(self, host: str) -> bool:
        hosts = self.hosts() if callable(self.hosts) else self.hosts
        return hosts is None or is_loopback_host(host) or host in {host_name(h) for h in hosts}

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.origins or origin in self.origins

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host_header = headers.get("host", "")
        if host_header and not self.host_allowed(host_name(host_header)):
            name = host_name(host_header)
            return await self.problem(HTTPProblem(
                403, f"Host '{name[:100]}' is not served here (DNS rebinding protection); start the server with "
                f"--allow-host {name[:100]} to accept it", code="host_not_allowed"))(scope, receive, send)
        origin = headers.get("origin")
        if origin is None:
            return await self.app(scope, receive, send)
        origin = origin.strip().rstrip("/").lower()
        same = host_header and origin == origin_of(scope.get("scheme", "http"), host_header)
        cors = not same and self.origin_allowed(origin)
        if not same and not cors:
            return await self.problem(HTTPProblem(
                403, f"cross-origin request from '{origin[:100]}' refused; allow the origin with --cors-origin",
                code="origin_not_allowed"))(scope, receive, send)
        if not cors:
            return await self.app(scope, receive, send)
        allow_origin = "*" if "*" in self.origins else origin
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            # a preflight: any method we serve, any header the client asks for (the OpenAI JS SDK sends
            # x-stainless-*), no credentials (bearer keys travel in Authorization, which is listed)
            out = [(b"access-control-allow-origin", allow_origin.encode("latin-1")),
                   (b"access-control-allow-methods", self.allow_methods.encode()),
                   (b"access-control-max-age", str(self.max_age).encode()), (b"vary", b"Origin"),
                   (b"content-length", b"0")]
            asked = headers.get("access-control-request-headers")
            if asked:
                out.append((b"access-control-allow-headers", asked.encode("latin-1")))
            await send({"type": "http.response.start", "status": 204, "headers": out})
            return await send({"type": "http.response.body", "body": b""})

        async def send_cors(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"access-control-allow-origin", allow_origin.encode("latin-1")),
                                                  (b"access-control-expose-headers", b"Retry-After"),
                                                  (b"vary", b"Origin")]}
            await send(message)

        await self.app(scope, receive, send_cors)


# ------------------------------------------------------------------------------------------- bounded bodies


def media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


async def read_body(request, limit: int = MAX_BODY) -> bytes:
    """The body of a Starlette request, at most `limit` bytes (413 beyond; the rest is read and dropped up to
    DRAIN_LIMIT, so a keep-alive connection stays in step)."""
    declared = request.headers.get("content-length")
    too_big = HTTPProblem(413, f"request body is larger than {limit} bytes", code="request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        if int(declared) <= DRAIN_LIMIT:
            async for _ in request.stream():
                pass
        else:
            too_big.headers = {"Connection": "close"}
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            drained = size
            async for rest in request.stream():
                drained += len(rest)
                if drained > DRAIN_LIMIT:
                    too_big.headers = {"Connection": "close"}
                    break
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def decode_json(body: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse a request body: UTF-8 JSON, nesting at most `max_depth`, every string valid Unicode (no lone
    surrogates), no NaN/Infinity. Any violation is a 400 naming the place."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HTTPProblem(400, f"request body is not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise HTTPProblem(400, f"request body nests deeper than {max_depth} levels") from None
    except json.JSONDecodeError as e:
        raise HTTPProblem(400, f"request body is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
                          ) from None
    except ValueError as e:  # NaN / Infinity, or an integer beyond Python's digit limit
        raise HTTPProblem(400, f"request body is not valid JSON ({e})") from None
    check_json(data, max_depth)
    return data


def check_json(data: Any, max_depth: int = MAX_DEPTH) -> None:
    """Depth and string checks over a decoded JSON value, iteratively (no recursion to exhaust)."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            _check_string(value, path)
        elif isinstance(value, (dict, list)):
            if depth >= max_depth:
                raise HTTPProblem(400, f"request body nests deeper than {max_depth} levels (at {path or 'top'})",
                                  param=path or None)
            if isinstance(value, dict):
                for k, v in value.items():
                    _check_string(k, path)
                    stack.append((v, f"{path}.{k}" if path else k, depth + 1))
            else:
                stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))


def _check_string(s: str, path: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise HTTPProblem(400, f"invalid string at '{path or 'top'}': a lone surrogate (U+{ord(s[e.start]):04X}) "
                          "is not Unicode text", code="invalid_value", param=path[:200] or None) from None


async def read_json(request, limit: int = MAX_BODY, max_depth: int = MAX_DEPTH) -> Any:
    """A JSON request body: `Content-Type: application/json` (415 otherwise: a form or text/plain POST is what a
    foreign page can send without a preflight), at most `limit` bytes, decoded with `decode_json`."""
    kind = media_type(request.headers.get("content-type"))
    if kind != "application/json" and not (kind.startswith("application/") and kind.endswith("+json")):
        # read it anyway so the connection stays usable for the next request
        await read_body(request, limit)
        raise HTTPProblem(415, f"send the request body as JSON with 'Content-Type: application/json' "
                          f"(got {kind[:60] or 'none'})", code="unsupported_media_type")
    return decode_json(await read_body(request, limit), max_depth)


# ------------------------------------------------------------------------------------------- rate limits


class RateLimit:
    """A token bucket per key (client address): `rate` requests per second on average, bursts of `burst`."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000):
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when allowed (one token taken), else the seconds until the next token."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return (1.0 - tokens) / self.rate
            if len(self._buckets) >= self.max_keys and key not in self._buckets:
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < self.burst / self.rate}
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0

    def check(self, key: str) -> None:
        wait = self.take(key)
        if wait:
            raise HTTPProblem(429, "too many requests from this client; slow down", code="rate_limit_exceeded",
                              headers={"Retry-After": str(max(1, int(wait + 0.999)))})


def client_key(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"
