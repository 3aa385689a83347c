"""Any OpenAI-compatible server (vLLM, llama.cpp server, Ollama, OpenAI, `camelid serve`) via the `openai` client.

The client's own retries are off; this module retries 429, 5xx, timeouts, connection errors and garbage bodies with
exponential backoff and jitter (honouring Retry-After), never retries other 4xx, spreads requests round-robin over
several base URLs, and ends with one clear error naming the server and the last failure.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import typing
from typing import Any, Callable, Iterator

import pydantic

from camelid.core.templates import user_text
from camelid.models.base import (BadInputError, Chunk, Completion, ContextLengthError, Model, ModelError, Sampling,
                                 UpstreamError)


_types_built = threading.Lock()
_built: list[type] = []


def build_response_types() -> list[type]:
    """Build the pydantic classes of the replies (completions, chat completions, chunks, models) now, in this thread.
    The `openai` client defers building them to first use, and that build is not thread-safe: requests parsed at
    once by several threads could fail with "BaseModel cannot be instantiated directly" (openai-python #3079)."""
    from openai.types import Completion, Model as ModelInfo
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    def walk(tp, seen: dict) -> None:
        if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
            if tp not in seen:
                seen[tp] = None
                for f in tp.model_fields.values():
                    walk(f.annotation, seen)
            return
        for arg in typing.get_args(tp):
            walk(arg, seen)

    with _types_built:
        if not _built:
            seen: dict = {}
            for root in (Completion, ChatCompletion, ChatCompletionChunk, ModelInfo):
                walk(root, seen)
            for cls in seen:
                if not cls.__pydantic_complete__:
                    cls.model_rebuild()
            _built.extend(seen)
    return _built


class RemoteModel(Model):
    # passed to the upstream unchanged: it honours them or refuses them itself
    sampling_options = frozenset({"presence_penalty", "frequency_penalty", "logit_bias", "response_format"})

    def __init__(self, name: str, base_urls: list[str], api_key: str | None = None, timeout: float = 120.0,
                 max_retries: int = 5, backoff: float = 0.5, max_backoff: float = 30.0, concurrency: int = 8):
        import openai

        if not base_urls:
            raise ModelError(f"openai:{name}: no server URL; pass --base-url or set OPENAI_BASE_URL")
        self.name = name
        self.base_urls = base_urls
        self.clients = [openai.OpenAI(base_url=u, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout)
                        for u in base_urls]
        build_response_types()  # before any worker thread parses a reply
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.max_concurrency = concurrency
        self.context_length = None  # the server knows its model's context and checks every request itself
        self._next = itertools.count()
        self._lock = threading.Lock()
        self.retries = 0  # total retries made, for reports and tests

    # ------------------------------------------------------------------ retry loop
    def _pick(self) -> tuple[str, Any]:
        with self._lock:
            i = next(self._next) % len(self.clients)
        return self.base_urls[i], self.clients[i]

    def _call(self, fn: Callable[[Any], Any]) -> Any:
        import openai

        last, status = "", 502
        for attempt in range(self.max_retries + 1):
            url, client = self._pick()
            wait = None
            try:
                return fn(client)
            except openai.APIStatusError as e:
                msg = _error_message(e)
                if e.status_code == 400 and "context" in msg.lower():
                    raise ContextLengthError(f"{url}: {msg}") from None
                if e.status_code in (400, 404, 413, 422):  # the request was wrong: the client should know why
                    raise BadInputError(f"{url}: HTTP {e.status_code}: {msg}") from None
                if e.status_code != 429 and e.status_code < 500:
                    raise UpstreamError(f"{url}: HTTP {e.status_code}: {msg}", 502) from None
                last, status = f"HTTP {e.status_code}: {msg}", 503 if e.status_code in (429, 503) else 502
                wait = _retry_after(e.response)
            except openai.APITimeoutError:
                last, status = "timed out", 504
            except openai.APIConnectionError as e:
                last, status = f"connection failed ({e.__cause__ or e})", 503
            except (openai.APIResponseValidationError, ValueError, KeyError, TypeError, AttributeError) as e:
                last, status = f"unreadable response ({type(e).__name__}: {e})", 502
            if attempt == self.max_retries:
                break
            self.retries += 1
            delay = min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.5)
            time.sleep(min(self.max_backoff, wait) if wait is not None else delay)
        raise UpstreamError(f"openai:{self.name} at {', '.join(self.base_urls)}: gave up after "
                            f"{self.max_retries + 1} tries; last error: {last}", status)

    @staticmethod
    def _params(s: Sampling) -> dict[str, Any]:
        p: dict[str, Any] = {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}
        if s.stop:
            p["stop"] = s.stop[:4]  # the OpenAI API takes at most 4
        if s.seed is not None:
            p["seed"] = s.seed
        if s.presence_penalty:
            p["presence_penalty"] = s.presence_penalty
        if s.frequency_penalty:
            p["frequency_penalty"] = s.frequency_penalty
        if s.logit_bias:
            p["logit_bias"] = {str(k): v for k, v in s.logit_bias.items()}
        if s.response_format:
            p["response_format"] = s.response_format
        return p

    # ------------------------------------------------------------------ completion and chat
    def _stream(self, prompt: str, sampling: Sampling) -> Iterator[Chunk]:
        def call(c):
            r = c.completions.create(model=self.name, prompt=prompt, **self._params(sampling))
            ch = r.choices[0]
            return Chunk(ch.text, ch.finish_reason or "stop", *_usage(r))

        yield self._call(call)

    def stream_chat(self, messages: list[dict], sampling: Sampling | None = None) -> Iterator[Chunk]:
        """Streams from the server; retries happen only before the first token arrives."""
        s = sampling or Sampling()

        def open_stream(c):
            stream = c.chat.completions.create(model=self.name, messages=_plain(messages), stream=True,
                                               stream_options={"include_usage": True}, **self._params(s))
            it = iter(stream)
            first = next(it, None)  # surface connection/HTTP errors inside the retry loop
            if first is None:  # a 200 whose body held no event: not an answer (an empty one has a finish event)
                raise ValueError("the stream held no events")
            return first, it

        first, it = self._call(open_stream)
        finish, usage, events = None, None, 0
        for ev in itertools.chain([first], it):
            if ev.usage:
                usage = _usage(ev)
            for ch in ev.choices:
                finish = ch.finish_reason or finish
                if ch.delta and ch.delta.content:
                    events += 1
                    yield Chunk(ch.delta.content)
        # servers without stream usage (llama.cpp's) send about one event per token: the best estimate there is
        yield Chunk("", finish or "stop", *(usage or (0, events)))

    def chat(self, messages: list[dict], sampling: Sampling | None = None):
        s = sampling or Sampling()
        t0 = time.perf_counter()

        def call(c):
            r = c.chat.completions.create(model=self.name, messages=_plain(messages), **self._params(s))
            ch = r.choices[0]
            return Completion(ch.message.content or "", ch.finish_reason or "stop", *_usage(r), self.name)

        out = self._call(call)
        out.latency_s = time.perf_counter() - t0
        return out

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)  # servers expose no tokenizer; a rough estimate for budgeting only


def _plain(messages: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": user_text(m) if m["role"] == "user" else m["content"]} for m in messages]


def _usage(r) -> tuple[int, int]:
    u = getattr(r, "usage", None)
    return (u.prompt_tokens or 0, u.completion_tokens or 0) if u else (0, 0)


def _error_message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(e, "message", e))


def _retry_after(response) -> float | None:
    try:
        value = response.headers.get("retry-after")
        return max(0.0, float(value)) if value is not None else None
    except (ValueError, AttributeError):
        return None
