"""The served /openapi.json: request bodies of the POST endpoints (the request models) and the error responses each
route really returns, in OpenAI's error shape (the routes read their bodies themselves, so FastAPI alone would
describe none and declare a 422 that is never sent)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from camelid.serve.protocol import ChatCompletionRequest, CompletionRequest

BODIES = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
# every route: refused Host or Origin (403), wrong key (401), busy (429 on generation only), bugs (500)
COMMON = {"401": "missing or wrong API key", "403": "Host or Origin not allowed", "500": "server error"}
GENERATION = {"400": "invalid request", "404": "unknown model", "413": "request body too large",
              "415": "body is not application/json", "429": "too many requests queued (see Retry-After)",
              "502": "the upstream server failed", "503": "the upstream server is unavailable",
              "504": "the upstream server timed out"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def describe(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        components["Error"] = ERROR
        for path, ops in schema.get("paths", {}).items():
            for method, op in ops.items():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                for status, text in COMMON.items():
                    responses.setdefault(status, _error(text))
                if path.startswith("/v1/models/"):
                    responses["404"] = _error("unknown model")
                if method == "post" and path in BODIES:
                    cls = BODIES[path]
                    body = cls.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
                    components.update(body.pop("$defs", {}))
                    components[cls.__name__] = body
                    op["requestBody"] = {"required": True, "content": {"application/json": {
                        "schema": {"$ref": f"#/components/schemas/{cls.__name__}"}}}}
                    for status, text in GENERATION.items():
                        responses[status] = _error(text)
                    responses["200"]["content"] = {
                        "application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": {"type": "string"}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
