"""`camelid arena`'s web app: the voting page (its script and styles as files, under the chat page's CSP), the
voting API and the results. The arena itself (items, sessions, votes) is camelid.evaluate.arena."""

import hmac
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from camelid.core.http import Guard, HTTPProblem, RateLimit, client_key, is_loopback_host, read_json
from camelid.evaluate.arena import VOTES, Arena, VoteRefused, results, results_html

# the chat page's policy (camelid.serve.server.PAGE_CSP): nothing but this server's own files
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
            "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def create_app(arena: Arena, *, api_key: str | None = None, allowed_hosts: list[str] | None = (),
               session_rate: tuple[float, int] = (1 / 60, 10), vote_rate: tuple[float, int] = (0.5, 30),
               max_body: int = 4096):
    """The FastAPI app: the voting page, its JSON API and the results.

    `api_key`: required on the voting API (`Authorization: Bearer KEY`; the page asks for it). `session_rate` and
    `vote_rate`: (per second, burst) per client address. `allowed_hosts`: as in camelid.serve.server.create_app."""
    app = FastAPI(title="camelid arena", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.bind_host = None
    static = resources.files("camelid.evaluate").joinpath("static")
    page = static.joinpath("arena.html").read_text("utf-8")
    files = {name: (static.joinpath(name).read_text("utf-8"), kind)
             for name, kind in (("arena.js", "text/javascript"), ("arena.css", "text/css"),
                                ("results.css", "text/css"))}
    sessions, votes = RateLimit(*session_rate), RateLimit(*vote_rate)
    secure = {"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff",
              "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
    extra_hosts = None if allowed_hosts is None else list(allowed_hosts)

    def host_names():
        bound = app.state.bind_host
        if extra_hosts is None or (bound is not None and not is_loopback_host(bound) and not extra_hosts):
            return None
        return extra_hosts

    def problem(e: HTTPProblem) -> JSONResponse:
        return JSONResponse({"detail": e.message}, status_code=e.status, headers=e.headers)

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, e: HTTPProblem):
        return problem(e)

    @app.exception_handler(VoteRefused)
    async def _refused(request: Request, e: VoteRefused):
        return JSONResponse({"detail": str(e)}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        err = e.errors()[0]
        return JSONResponse({"detail": f"{'.'.join(map(str, err['loc']))}: {err['msg']}"}, status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        return JSONResponse({"detail": str(e.detail)}, status_code=e.status_code, headers=dict(e.headers or {}))

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise HTTPProblem(401, "this arena needs its vote key: 'Authorization: Bearer KEY'",
                              headers={"WWW-Authenticate": "Bearer"})

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    def index():
        return HTMLResponse(page, headers=secure)

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/static/{name}")
    def static_file(name: str):
        if name not in files:
            raise HTTPProblem(404, "no such file")
        text, kind = files[name]
        return Response(text, media_type=kind, headers=secure)

    @app.post("/api/session")
    async def new_session(request: Request) -> dict:
        authorize(request)
        await read_json(request, max_body)
        sessions.check(client_key(request.scope))
        return {"session": arena.new_session(client_key(request.scope))}

    @app.get("/api/next")
    def next_item(request: Request, session: str = "") -> dict:
        authorize(request)
        return arena.next(session)

    @app.post("/api/vote")
    async def vote(request: Request) -> dict:
        authorize(request)
        body = await read_json(request, max_body)
        if not isinstance(body, dict) or set(body) != {"session", "idx", "vote"}:
            raise HTTPProblem(400, "send {\"session\": TOKEN, \"idx\": INDEX, \"vote\": " + "|".join(VOTES) + "}")
        votes.check(client_key(request.scope))
        arena.vote(body["session"], body["idx"], body["vote"])
        return arena.next(body["session"])

    @app.get("/api/results")
    def api_results() -> dict:
        return results(arena.db)

    @app.get("/results", response_class=HTMLResponse)
    def results_page():
        return HTMLResponse(results_html(results(arena.db)), headers=secure)

    app.add_middleware(Guard, allowed_hosts=host_names, cors_origins=(), problem=problem)
    return app


def serve(arena: Arena, host: str = "127.0.0.1", port: int = 8001, api_key: str | None = None,
          allowed_hosts: list[str] | None = ()) -> None:
    import uvicorn

    app = create_app(arena, api_key=api_key, allowed_hosts=allowed_hosts)
    app.state.bind_host = host
    uvicorn.run(app, host=host, port=port, log_level="warning")
