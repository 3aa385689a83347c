"""An OpenAI-compatible HTTP server over any camelid model, with the chat page at `/`.

`create_app(model)` returns a FastAPI app (tests, `camelid eval` and arena code reuse it); `serve()` runs it with
uvicorn and `BackgroundServer` runs it in a thread on a free loopback port. The gate (gate.py) bounds the
generations running and waiting.

Whatever a client sends, a bad request gets a 4xx with OpenAI's error body and the connection stays usable: bodies are
read with a size limit and decoded with bounded depth and valid strings (camelid.core.http), options are validated
strictly (protocol.py) and failures the input caused are mapped to 4xx (`backend_error`). Safe in a browser by
default: a loopback server answers only to loopback Host names, cross-origin requests are refused unless their origin
is allowed (--cors-origin), and JSON endpoints take only `application/json` bodies.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import AsyncIterator, Callable, Iterable, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from camelid.core.http import MAX_BODY, Guard, HTTPProblem, is_loopback_host, read_json
from camelid.core.io import CamelidError
from camelid.models.base import BadInputError, Chunk, ContextLengthError, Model, ModelError, UpstreamError
from camelid.serve.gate import ClientGone, Gate, generate, until_disconnect
from camelid.serve.middleware import AccessLog, BearerAuth
from camelid.serve.openapi import describe
from camelid.serve.protocol import (SSE_DONE, APIError, ChatCompletionRequest, CompletionRequest, chat_chunk,
                                    chat_response, completion_chunk, completion_response, error_response, new_id,
                                    parse_request, sse)
from camelid.serve.protocol import usage as usage_body

log = logging.getLogger("camelid.serve")
STATIC = Path(__file__).parent / "static"
# the page loads nothing but its own files and talks only to this server
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
            "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
UPSTREAM_CODES = {502: "upstream_error", 503: "upstream_unavailable", 504: "upstream_timeout"}


def backend_error(e: BaseException, param: str) -> APIError:
    """Map a failure from the model to the status a client should see: what the input caused is a 4xx, a failed
    upstream a 502/503/504, anything else a 500 (details in the log)."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, HTTPProblem):
        return problem_error(e)
    if isinstance(e, ContextLengthError):
        return APIError(400, str(e), param=param, code="context_length_exceeded")
    if isinstance(e, BadInputError):
        return APIError(400, str(e), param=e.param or param, code="invalid_value")
    if isinstance(e, UpstreamError):
        log.error("upstream failed: %s", e)
        return APIError(e.status, f"the upstream server failed: {str(e).splitlines()[0][:500]}",
                        type="server_error", code=UPSTREAM_CODES.get(e.status, "upstream_error"))
    if isinstance(e, CamelidError) and not isinstance(e, ModelError):  # TemplateError: roles out of order, ...
        return APIError(400, str(e), param=param)
    if isinstance(e, ModelError):  # the backend's own account, meant for users
        log.error("generation failed: %s", e)
        return APIError(500, f"the model failed: {e}", type="server_error", code="backend_error")
    log.error("generation failed", exc_info=e)  # a bug: details go to the log, not to the client
    return APIError(500, f"the model failed ({type(e).__name__}); see the server log", type="server_error",
                    code="backend_error")


def problem_error(e: HTTPProblem) -> APIError:
    return APIError(e.status, e.message, type="invalid_request_error", param=e.param, code=e.code, headers=e.headers)


# ------------------------------------------------------------------------------------------------- the app


def create_app(model: Model, *, model_name: str | None = None, api_key: str | None = None,
               cors_origins: list[str] | None = None, allowed_hosts: Iterable[str] | None = (), max_queue: int = 16,
               concurrency: int | None = None, default_max_tokens: int = 1024, page: bool = True,
               max_body: int = MAX_BODY) -> FastAPI:
    """An OpenAI-compatible app over `model`: /v1/models, /v1/chat/completions, /v1/completions, /health and the
    chat page at `/`. `concurrency` defaults to the model's `max_concurrency` (1 for local backends).

    `allowed_hosts`: Host names accepted besides loopback ones. While the server is bound to a loopback address
    (or its bind address is unknown) only those are answered; bound elsewhere, any Host is unless names are given.
    None: any Host, always. `cors_origins`: origins allowed to call it from a browser ("*": any)."""
    served = model_name or model.name
    names = {served, model.name}
    gate = Gate(concurrency or model.max_concurrency, max_queue)
    created = int(time.time())
    # max_tokens beyond the model's context can never be honoured (None: a remote server checks it itself)
    max_tokens_limit = model.context_length
    extra_hosts = None if allowed_hosts is None else list(allowed_hosts)

    app = FastAPI(title="camelid", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.model, app.state.gate, app.state.served_name = model, gate, served
    app.state.bind_host = None  # set by serve() / BackgroundServer

    def host_names() -> list[str] | None:
        if extra_hosts is None:
            return None
        bound = app.state.bind_host
        if bound is not None and not is_loopback_host(bound) and not extra_hosts:
            return None
        return extra_hosts

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return error_response(e)

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, e: HTTPProblem):
        return error_response(problem_error(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        message = {404: f"no such path: {request.url.path[:200]}",
                   405: f"{request.method[:20]} is not allowed on {request.url.path[:200]}"}.get(e.status_code,
                                                                                                 str(e.detail))
        headers = dict(e.headers or {})
        if e.status_code == 405:  # Starlette names the methods of one matching route: name them all
            path = request.url.path
            headers["Allow"] = ", ".join(sorted({m for r in app.routes if getattr(r, "path_regex", None)
                                                 and r.path_regex.match(path) for m in getattr(r, "methods", ())}))
        return error_response(APIError(e.status_code, message, code=code, headers=headers))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(APIError(500, f"internal error: {type(e).__name__}", type="server_error"))

    def check(req) -> None:
        if req.model and req.model not in names:
            raise APIError(404, f"the model '{req.model[:200]}' does not exist; this server serves '{served}'",
                           param="model", code="model_not_found")
        limit = getattr(req, "max_completion_tokens", None) or req.max_tokens
        if max_tokens_limit and limit and limit > max_tokens_limit:
            param = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
            raise APIError(400, f"{param} is {limit}, but the model's context holds {max_tokens_limit} tokens",
                           param=param, code="invalid_value")
        for option in req.options_used():
            if option not in model.sampling_options:
                raise APIError(400, f"'{option}' is not supported by this model's backend ({type(model).__name__})",
                               param=option, code="unsupported_parameter")

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
    @app.head("/health", include_in_schema=False)
    async def health():
        return {"status": "ok", "model": served, "auth": api_key is not None, "max_tokens": max_tokens_limit,
                **gate.stats()}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": served, "object": "model", "created": created,
                                            "owned_by": "camelid"}]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        if name not in names:
            raise APIError(404, f"the model '{name[:200]}' does not exist", param="model", code="model_not_found")
        return {"id": served, "object": "model", "created": created, "owned_by": "camelid"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse_request(await read_json(request, max_body), ChatCompletionRequest)
        check(req)
        sampling = req.sampling(default_max_tokens)
        if req.max_completion_tokens:
            sampling.max_tokens = req.max_completion_tokens
        messages = req.plain_messages()
        return await run(request, req, lambda: model.stream_chat(messages, sampling), "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse_request(await read_json(request, max_body), CompletionRequest)
        check(req)
        sampling = req.sampling(16)  # the OpenAI default for completions
        prompt = req.prompt
        return await run(request, req, lambda: model.stream(prompt, sampling), "completion")

    if page:
        @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
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
                raise APIError(404, f"no such file: {name[:100]}", code="not_found")
            return FileResponse(path, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    describe(app)
    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)
    app.add_middleware(Guard, allowed_hosts=host_names, cors_origins=cors_origins or (),
                       problem=lambda e: error_response(problem_error(e)))
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

    app.state.bind_host = host
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
    finally:
        app.state.gate.drain()


class BackgroundServer(AbstractContextManager):
    """Run an app with uvicorn in a thread on 127.0.0.1 (port 0 = a free one); `url` once /health answers."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
        import uvicorn

        app.state.bind_host = host
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
