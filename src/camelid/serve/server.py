"""An OpenAI-compatible HTTP server over any camelid model, with the chat page at `/`.

`create_app(model)` returns a FastAPI app (tests, `camelid eval` and arena code reuse it); `serve()` runs it with
uvicorn and `BackgroundServer` runs it in a thread on a free loopback port.

Generations are synchronous generators (llama.cpp holds a lock: one at a time), so each request that gets a model slot
runs its generator in its own worker thread and hands chunks to the event loop through an asyncio queue. A bounded
gate sits in front: at most `concurrency` generations run and `max_queue` more wait; the next one gets 429 with
Retry-After. A client that disconnects (queued or streaming) sets a cancel flag; the worker closes the generator at
the next token, which ends llama.cpp's token loop and releases its lock, and only then frees the slot.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from camelid.core.io import CamelidError
from camelid.models.base import Chunk, ContextLengthError, Model, ModelError
from camelid.serve.protocol import (SSE_DONE, APIError, ChatCompletionRequest, CompletionRequest, chat_chunk,
                                    chat_response, completion_chunk, completion_response, new_id, parse_request, sse)
from camelid.serve.protocol import usage as usage_body

log = logging.getLogger("camelid.serve")
STATIC = Path(__file__).parent / "static"
# the page loads nothing but its own files and talks only to this server
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
            "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_END = object()


class ClientGone(Exception):
    pass


# ------------------------------------------------------------------------------------------------- the gate


class Gate:
    """At most `concurrency` generations run and `max_queue` wait; slots are freed by the worker thread itself."""

    def __init__(self, concurrency: int, max_queue: int):
        self.concurrency, self.max_queue = max(1, concurrency), max(0, max_queue)
        self.admitted = 0  # waiting + running
        self.running = 0
        self.total = 0  # requests admitted since start
        self._sem: asyncio.Semaphore | None = None
        self._latency = 2.0  # moving average of a generation's seconds, for Retry-After
        self.workers: dict[threading.Thread, threading.Event] = {}  # live generations and their cancel flags

    @property
    def sem(self) -> asyncio.Semaphore:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.concurrency)
        return self._sem

    def admit(self) -> None:
        if self.admitted >= self.concurrency + self.max_queue:
            wait = self._latency * (self.admitted - self.concurrency + 1) / self.concurrency
            raise APIError(429, f"the server is busy ({self.admitted} requests running or queued); retry shortly",
                           type="rate_limit_exceeded", code="rate_limit_exceeded",
                           headers={"Retry-After": str(min(60, max(1, math.ceil(wait))))})
        self.admitted += 1
        self.total += 1

    def leave(self, seconds: float | None = None) -> None:
        self.admitted -= 1
        if seconds is not None:
            self._latency = 0.8 * self._latency + 0.2 * seconds

    def drain(self, timeout: float = 30.0) -> bool:
        """Cancel every generation and wait for the workers (call before closing the model at shutdown)."""
        for cancel in list(self.workers.values()):
            cancel.set()
        deadline = time.monotonic() + timeout
        for thread in list(self.workers):
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in list(self.workers))

    def stats(self) -> dict[str, int]:
        return {"running": self.running, "queued": self.admitted - self.running, "concurrency": self.concurrency,
                "max_queue": self.max_queue, "requests": self.total}


async def generate(gate: Gate, start: Callable[[], Iterator[Chunk]]) -> AsyncIterator[Chunk]:
    """Admit, wait for a slot, run `start()`'s generator in a worker thread, yield its chunks on the event loop.

    Closing or cancelling this generator (client gone) stops the worker at its next chunk; the slot is freed when the
    worker has closed the backend's generator, so the next request never waits on a lock still held."""
    gate.admit()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
    started = False
    t0 = time.perf_counter()

    def post(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # loop closed: the server is shutting down
            cancel.set()

    def finished() -> None:
        gate.running -= 1
        gate.sem.release()
        gate.leave(time.perf_counter() - t0)

    def work() -> None:
        try:
            chunks = start()
            try:
                for c in chunks:
                    if cancel.is_set():
                        break
                    post(c)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
        except BaseException as e:  # delivered to the request; the server stays up
            post(e)
        finally:
            gate.workers.pop(threading.current_thread(), None)
            post(_END)
            try:
                loop.call_soon_threadsafe(finished)
            except RuntimeError:
                pass

    acquired = False
    try:
        await gate.sem.acquire()
        acquired = True
        gate.running += 1
        worker = threading.Thread(target=work, name="camelid-generate", daemon=True)
        gate.workers[worker] = cancel
        worker.start()
        started = True
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # no awaits here: this may run inside a cancelled scope when the client went away
        cancel.set()
        if not started:
            if acquired:
                gate.running -= 1
                gate.sem.release()
            gate.leave()


async def until_disconnect(request: Request, aw, poll: float = 0.2):
    """Await `aw`, cancelling it if the HTTP client disconnects meanwhile."""
    task = asyncio.ensure_future(aw)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except BaseException:
                pass


def backend_error(e: BaseException, param: str) -> APIError:
    """Map a failure from the model to the status a client should see."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ContextLengthError):
        return APIError(400, str(e), param=param, code="context_length_exceeded")
    if isinstance(e, CamelidError) and not isinstance(e, ModelError):  # TemplateError: roles out of order, ...
        return APIError(400, str(e), param=param)
    if isinstance(e, ModelError):  # the backend's own account (upstream gave up, ...), meant for users
        log.error("generation failed: %s", e)
        return APIError(500, f"the model failed: {e}", type="server_error", code="backend_error")
    log.error("generation failed", exc_info=e)  # a bug: details go to the log, not to the client
    return APIError(500, f"the model failed ({type(e).__name__}); see the server log", type="server_error",
                    code="backend_error")


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


# ------------------------------------------------------------------------------------------------- middleware


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


# ------------------------------------------------------------------------------------------------- the app


def create_app(model: Model, *, model_name: str | None = None, api_key: str | None = None,
               cors_origins: list[str] | None = None, max_queue: int = 16, concurrency: int | None = None,
               default_max_tokens: int = 1024, page: bool = True) -> FastAPI:
    """An OpenAI-compatible app over `model`: /v1/models, /v1/chat/completions, /v1/completions, /health and the
    chat page at `/`. `concurrency` defaults to the model's `max_concurrency` (1 for local backends)."""
    served = model_name or model.name
    names = {served, model.name}
    gate = Gate(concurrency or model.max_concurrency, max_queue)
    created = int(time.time())
    # max_tokens beyond the model's context can never be honoured (None: a remote server checks it itself)
    max_tokens_limit = model.context_length

    app = FastAPI(title="camelid", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.model, app.state.gate, app.state.served_name = model, gate, served

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return error_response(APIError(e.status_code, str(e.detail), code=code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(APIError(500, f"internal error: {type(e).__name__}", type="server_error"))

    def check(req) -> None:
        if req.model and req.model not in names:
            raise APIError(404, f"the model '{req.model}' does not exist; this server serves '{served}'",
                           param="model", code="model_not_found")
        limit = getattr(req, "max_completion_tokens", None) or req.max_tokens
        if max_tokens_limit and limit and limit > max_tokens_limit:
            raise APIError(400, f"max_tokens is {limit}, but the model's context holds {max_tokens_limit} tokens",
                           param="max_tokens", code="invalid_value")

    async def run(request: Request, req, start: Callable[[], Iterator[Chunk]], kind: str) -> Response:
        """Start the generation; errors before the first chunk become proper statuses, then stream or collect."""
        param = "messages" if kind == "chat" else "prompt"
        rid = new_id("chatcmpl" if kind == "chat" else "cmpl")
        agen = generate(gate, start)
        try:
            first = await until_disconnect(request, agen.__anext__())
        except StopAsyncIteration:
            first = Chunk("", "stop")
        except ClientGone:
            request.state.disconnected = True
            await agen.aclose()
            return Response(status_code=499)
        except Exception as e:
            await agen.aclose()
            raise backend_error(e, param) from None

        if not req.stream:
            async def collect() -> list[Chunk]:
                out = [first]
                if not first.finish_reason:
                    async for c in agen:
                        out.append(c)
                return out

            try:
                chunks = await until_disconnect(request, collect())
            except ClientGone:
                request.state.disconnected = True
                return Response(status_code=499)
            except Exception as e:
                raise backend_error(e, param) from None
            finally:
                await agen.aclose()
            last = chunks[-1]
            request.state.usage = (last.prompt_tokens, last.completion_tokens)
            body = chat_response if kind == "chat" else completion_response
            return JSONResponse(body(rid, served, "".join(c.text for c in chunks), last.finish_reason or "stop",
                                     last.prompt_tokens, last.completion_tokens))

        async def events() -> AsyncIterator[bytes]:
            piece = _StreamPieces(kind, rid, served, req.include_usage)
            finished = False
            try:
                if kind == "chat":
                    yield sse(piece.delta({"role": "assistant", "content": ""}))
                c = first
                while True:
                    if c.text:
                        yield sse(piece.text(c.text))
                    if c.finish_reason:
                        request.state.usage = (c.prompt_tokens, c.completion_tokens)
                        yield sse(piece.finish(c.finish_reason))
                        if req.include_usage:
                            yield sse(piece.usage(c.prompt_tokens, c.completion_tokens))
                        break
                    try:
                        c = await agen.__anext__()
                    except StopAsyncIteration:
                        c = Chunk("", "stop")
                yield SSE_DONE
                finished = True
            except Exception as e:  # the 200 is sent: report in the stream, as OpenAI does
                finished = True
                yield sse(backend_error(e, param).body())
            finally:
                if not finished:
                    request.state.disconnected = True
                await agen.aclose()

        return _EventStream(events(), media_type="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served, "auth": api_key is not None, **gate.stats()}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": served, "object": "model", "created": created,
                                            "owned_by": "camelid"}]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        if name not in names:
            raise APIError(404, f"the model '{name}' does not exist", param="model", code="model_not_found")
        return {"id": served, "object": "model", "created": created, "owned_by": "camelid"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse_request(await request.body(), ChatCompletionRequest)
        check(req)
        sampling = req.sampling(default_max_tokens)
        if req.max_completion_tokens:
            sampling.max_tokens = req.max_completion_tokens
        messages = req.plain_messages()
        return await run(request, req, lambda: model.stream_chat(messages, sampling), "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse_request(await request.body(), CompletionRequest)
        check(req)
        sampling = req.sampling(16)  # the OpenAI default for completions
        prompt = req.prompt
        return await run(request, req, lambda: model.stream(prompt, sampling), "completion")

    if page:
        @app.get("/", include_in_schema=False)
        async def index():
            return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP,
                                                                "Cache-Control": "no-cache"})

        @app.get("/favicon.ico", include_in_schema=False)
        async def favicon():
            return Response(status_code=204)

        @app.get("/static/{name}", include_in_schema=False)
        async def static(name: str):
            path = STATIC / name
            if "/" in name or name.startswith(".") or not path.is_file():
                raise APIError(404, f"no such file: {name}", code="not_found")
            return FileResponse(path, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(AccessLog)
    return app


class _StreamPieces:
    """The chunk bodies of one stream, chat (`chat.completion.chunk`) or completion (`text_completion`)."""

    def __init__(self, kind: str, rid: str, model: str, with_usage: bool):
        self.kind, self.rid, self.model, self.with_usage = kind, rid, model, with_usage
        self.created = int(time.time())

    def _body(self, delta: dict | None, text: str | None, finish: str | None, with_usage: bool) -> dict:
        if self.kind == "chat":
            return chat_chunk(self.rid, self.created, self.model, delta, finish, with_usage)
        return completion_chunk(self.rid, self.created, self.model, text, finish, with_usage)

    def delta(self, delta: dict) -> dict:
        return self._body(delta, "", None, self.with_usage)

    def text(self, text: str) -> dict:
        return self._body({"content": text}, text, None, self.with_usage)

    def finish(self, reason: str) -> dict:
        return self._body({}, "", reason, self.with_usage)

    def usage(self, p: int, c: int) -> dict:
        return {**self._body(None, None, None, False), "usage": usage_body(p, c)}


class _EventStream(StreamingResponse):
    """Closes the event generator however the response ends, so a vanished client never leaves a generation
    running (Starlette only cancels the send; a generator parked at `yield` would otherwise wait for the GC)."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


# ------------------------------------------------------------------------------------------------- running


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the app with uvicorn until Ctrl-C (uvicorn's own access log is off: AccessLog writes one line)."""
    import uvicorn

    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
    finally:
        app.state.gate.drain()


class BackgroundServer(AbstractContextManager):
    """Run an app with uvicorn in a thread on 127.0.0.1 (port 0 = a free one); `url` once /health answers."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                     timeout_graceful_shutdown=2, lifespan="off")
        self.server = uvicorn.Server(self.config)
        self.timeout = timeout
        self.thread = threading.Thread(target=self.server.run, name="camelid-serve", daemon=True)
        self.url = ""

    def __enter__(self) -> "BackgroundServer":
        import httpx

        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise CamelidError("the server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        httpx.get(self.url + "/health", timeout=self.timeout).raise_for_status()
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.config.app.state.gate.drain()  # no generation may outlive the server (the model may be closed next)
