"""OpenAI API shapes: request validation, response and stream-chunk bodies, and the error body.

Requests are validated here (not by FastAPI's body parsing) so every bad request gets the OpenAI error shape
`{"error": {"message", "type", "param", "code"}}` with status 400. Types are strict ("0.5" is not a number). Every
OpenAI option is either honoured or refused with a 400 naming it, as is an unknown one (OpenAI does the same).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator,
                      model_validator)

from camelid.models.base import Sampling


class APIError(Exception):
    """An error answered to the client with the OpenAI error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class _Strict(BaseModel):
    # strict: "0.5" is not a number and 1 is not a bool; forbid: an option this server does not know is refused,
    # as OpenAI does ("Unrecognized request argument"), never silently ignored
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]

    def plain(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(_Strict):
    include_usage: StrictBool = False
    include_obfuscation: StrictBool | None = None  # padding against length side channels: nothing to pad here


class JSONSchema(_Strict):
    name: StrictStr = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchema | None = None

    @model_validator(mode="after")
    def _schema_with_type(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given with type 'json_schema', and only then")
        return self

    def for_backend(self) -> dict[str, Any] | None:
        """None for plain text; else the OpenAI shape, the schema under json_schema.schema."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        js = self.json_schema
        return {"type": "json_schema", "json_schema": {"name": js.name, "schema": js.schema_ or {},
                                                       **({"strict": js.strict} if js.strict is not None else {})}}


# options a backend may or may not honour (Model.sampling_options): a request that sets one the backend cannot honour
# gets a 400 naming it
BACKEND_OPTIONS = ("presence_penalty", "frequency_penalty", "logit_bias", "response_format")


class _Common(_Strict):
    model: StrictStr | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: StrictInt | None = Field(None, ge=1)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(None, ge=-(2 ** 63), lt=2 ** 64)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = 1
    logprobs: StrictBool | StrictInt | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: StrictStr | None = Field(None, max_length=512)  # an end-user id for abuse tracking: logged nowhere here

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 16 or any(not s or len(s) > 512 for s in stops):
            raise ValueError("stop takes up to 16 non-empty strings of at most 512 characters")
        return stops

    @field_validator("n")
    @classmethod
    def _n(cls, v):
        if v not in (None, 1):
            raise ValueError("this server returns one choice per request (n=1)")
        return v

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v):
        if v:
            raise ValueError("logprobs are not supported by this server")
        return None

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v):
        if v is None:
            return v
        if len(v) > 1024:
            raise ValueError("logit_bias takes at most 1024 tokens")
        for k, b in v.items():
            if not (k.isascii() and k.isdigit()) or len(k) > 9:
                raise ValueError(f"logit_bias keys are token ids (decimal strings), got {k[:40]!r}")
            if not -100.0 <= b <= 100.0:
                raise ValueError(f"logit_bias values lie in [-100, 100], got {b} for token {k}")
        return v

    def sampling(self, default_max_tokens: int) -> Sampling:
        return Sampling(temperature=1.0 if self.temperature is None else self.temperature,
                        top_p=1.0 if self.top_p is None else self.top_p,
                        max_tokens=self.max_tokens or default_max_tokens, stop=list(self.stop or []), seed=self.seed,
                        presence_penalty=self.presence_penalty or 0.0, frequency_penalty=self.frequency_penalty or 0.0,
                        logit_bias={int(k): b for k, b in self.logit_bias.items()} if self.logit_bias else None,
                        response_format=self.backend_response_format())

    def backend_response_format(self) -> dict[str, Any] | None:
        return None

    def options_used(self) -> list[str]:
        """The backend-dependent options this request sets to something other than their no-op value."""
        used = [o for o in ("presence_penalty", "frequency_penalty") if getattr(self, o)]
        if self.logit_bias:
            used.append("logit_bias")
        if self.backend_response_format() is not None:
            used.append("response_format")
        return used

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def _refuse(what: str):
    def check(cls, v):
        if v not in (None, False, [], {}):
            raise ValueError(f"{what} {'are' if what.endswith('s') else 'is'} not supported by this server")
        return v

    return classmethod(check)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    # accepted only in their "nothing asked" form; anything else is refused, naming the parameter
    tools: list[Any] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    functions: list[Any] | None = None
    function_call: StrictStr | dict[str, Any] | None = None
    top_logprobs: StrictInt | None = None
    modalities: list[StrictStr] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    reasoning_effort: StrictStr | None = None
    store: StrictBool | None = None
    metadata: dict[str, StrictStr] | None = None  # kept with stored completions: none are stored, nothing to keep

    _tools = field_validator("tools")(_refuse("tools (function calling)"))
    _functions = field_validator("functions")(_refuse("functions (function calling)"))
    _audio = field_validator("audio")(_refuse("audio output"))
    _prediction = field_validator("prediction")(_refuse("predicted outputs"))
    _web = field_validator("web_search_options")(_refuse("web search"))
    _effort = field_validator("reasoning_effort")(_refuse("reasoning_effort"))
    _store = field_validator("store")(_refuse("stored completions (store)"))
    _top_logprobs = field_validator("top_logprobs")(_refuse("top_logprobs"))

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_choice(cls, v):
        if v not in (None, "none"):
            raise ValueError("function calling is not supported by this server (only 'none')")
        return v

    @field_validator("parallel_tool_calls")
    @classmethod
    def _no_parallel(cls, v):
        if v:
            raise ValueError("function calling is not supported by this server")
        return v

    @field_validator("modalities")
    @classmethod
    def _text_only(cls, v):
        if v is not None and v != ["text"]:
            raise ValueError("this server answers with text only (modalities: ['text'])")
        return v

    def backend_response_format(self) -> dict[str, Any] | None:
        return self.response_format.for_backend() if self.response_format else None

    def plain_messages(self) -> list[dict[str, str]]:
        return [m.plain() for m in self.messages]


class CompletionRequest(_Common):
    prompt: StrictStr | list[StrictStr]
    echo: StrictBool | None = False
    suffix: StrictStr | None = None
    best_of: StrictInt | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("send one prompt per request (a string or a list of one string)")
            v = v[0]
        if not v:
            raise ValueError("the prompt is empty: there is nothing to continue")
        return v

    @field_validator("echo")
    @classmethod
    def _echo(cls, v):
        if v:
            raise ValueError("echo is not supported by this server")
        return v

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v):
        if v:
            raise ValueError("suffix (insertion) is not supported by this server")
        return v

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, v):
        if v not in (None, 1):
            raise ValueError("this server generates one completion per request (best_of=1)")
        return v


def parse_request(data: Any, cls: type[_Common]) -> Any:
    """Validate a decoded request body (see camelid.core.http.decode_json); any mistake is a 400 naming the
    parameter."""
    if not isinstance(data, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        err = max(errors, key=lambda x: len(x["loc"]))  # in a union, the branch that got furthest explains best
        param = _param(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            raise APIError(400, f"missing required parameter: '{param}'", param=param) from None
        if err["type"] == "extra_forbidden":
            raise APIError(400, f"unrecognized request argument supplied: '{param}'", param=param,
                           code="unknown_parameter") from None
        value = err.get("input")
        got = "" if isinstance(value, (dict, list)) else f" (got {json.dumps(value, ensure_ascii=False)[:80]})"
        raise APIError(400, f"invalid value for '{param}': {msg}{got}", param=param,
                       code="invalid_value") from None


def _param(loc: tuple) -> str:
    """Pydantic's location as OpenAI writes it: messages[0].content (union branch names dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[TextPart]", "list[str]", "bool", "int", "float", "TextPart") or "[" in str(
                part) or str(part).startswith(("function-", "constrained-", "lax-", "strict-", "json-or-python")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


# --------------------------------------------------------------------------------------- response bodies


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(rid: str, model: str, text: str, finish: str, p: int, c: int) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish}],
            "usage": usage(p, c)}


def completion_response(rid: str, model: str, text: str, finish: str, p: int, c: int) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            "usage": usage(p, c)}


def chat_chunk(rid: str, created: int, model: str, delta: dict | None, finish: str | None,
               with_usage_field: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [] if delta is None else
                           [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if with_usage_field:
        out["usage"] = None  # OpenAI sends null here and the numbers in one last chunk with no choices
    return out


def completion_chunk(rid: str, created: int, model: str, text: str | None, finish: str | None,
                     with_usage_field: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": rid, "object": "text_completion", "created": created, "model": model,
                           "choices": [] if text is None else
                           [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    if with_usage_field:
        out["usage"] = None
    return out


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
