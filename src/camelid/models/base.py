"""The one small interface every backend implements: complete, chat, stream, map, count tokens."""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, TypeVar

from camelid.core.io import CamelidError
from camelid.core.templates import Template
from camelid.models.lockstep import lockstep_map

T = TypeVar("T")
R = TypeVar("R")


class ModelError(CamelidError):
    """A backend failed for a reason the user can act on (bad spec, server gave up, prompt too long)."""


class ContextLengthError(ModelError):
    pass


class BadInputError(ModelError):
    """The request itself cannot be run (empty prompt, token id out of the vocabulary, a schema the backend cannot
    compile); `param` names the request field to fix."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class Cancelled(Exception):
    """The command stopped this generation (Ctrl-C, an error elsewhere): not a failed request, nothing to log; a
    rerun asks it again."""


class UpstreamError(ModelError):
    """The upstream server failed (not the request): `status` is what a front server should answer — 502 for an
    error or unreadable answer, 503 when it refused the connection or was busy, 504 when it timed out."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.status = status


@dataclass
class Sampling:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # OpenAI's options; a backend lists those it honours in Model.sampling_options (the server refuses the rest)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit
    response_format: dict[str, Any] | None = None  # {"type": "json_object"} or {"type": "json_schema", ...}

    def with_stop(self, extra: Iterable[str]) -> "Sampling":
        return replace(self, stop=list(dict.fromkeys([*self.stop, *extra])))


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    latency_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Chunk:
    """A piece of a streamed answer; the last one has finish_reason set and the usage filled in."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Model:
    """Base class. Local backends implement `_stream` (+ `count_tokens`); chat renders the template here."""

    name: str = "model"
    template: Template | None = None
    eos_token: str | None = None
    bos_token: str | None = None
    context_length: int | None = 2048  # tokens of context; None when only the backend's server knows
    max_concurrency: int = 1  # how many requests `map` keeps in flight
    batched = False  # a local batching backend: `map` runs its calls in lockstep waves (models/lockstep.py)
    # Sampling fields beyond temperature/top_p/max_tokens/stop/seed that this backend honours
    sampling_options: frozenset[str] = frozenset()

    # ---- what a backend provides
    def _stream(self, prompt: str, sampling: Sampling) -> Iterator[Chunk]:
        raise ModelError(f"{type(self).__name__} cannot complete text")

    def count_tokens(self, text: str) -> int:
        raise ModelError(f"{type(self).__name__} cannot count tokens")

    def prefix_tokens(self) -> int:
        """Tokens the tokenizer puts before any text on its own (Llama's BOS): training counts them, a render does
        not show them."""
        return 0

    # ---- text completion
    def stream(self, prompt: str, sampling: Sampling | None = None) -> Iterator[Chunk]:
        return self._stream(prompt, sampling or Sampling())

    def complete(self, prompt: str, sampling: Sampling | None = None) -> Completion:
        return collect(self.stream(prompt, sampling), self.name)

    # ---- chat: the template is applied here, in one place
    def chat_prompt(self, messages: list[dict]) -> str:
        if self.template is None:
            raise ModelError(f"{self.name}: no chat template known; pass --template")
        return self.template.render(messages, add_generation_prompt=True, bos_token=self.bos_token,
                                    eos_token=self.eos_token)

    def chat_sampling(self, sampling: Sampling | None) -> Sampling:
        sampling = sampling or Sampling()
        return sampling.with_stop(self.template.stop_strings(self.eos_token)) if self.template else sampling

    def stream_chat(self, messages: list[dict], sampling: Sampling | None = None) -> Iterator[Chunk]:
        return self.stream(self.chat_prompt(messages), self.chat_sampling(sampling))

    def chat(self, messages: list[dict], sampling: Sampling | None = None) -> Completion:
        return collect(self.stream_chat(messages, sampling), self.name)

    # ---- many requests
    def map(self, fn: Callable[[T], R], items: Iterable[T], concurrency: int | None = None
            ) -> Iterator[tuple[int, R | BaseException]]:
        """Run `fn` over items with bounded concurrency; yield (index, result or exception) as each finishes,
        so a caller can persist finished work at once (a slow or failing request never holds back the rest).
        A local batching backend runs waves of `concurrency` calls whose requests decode as one group, and yields in
        item order: its outputs are then the same run after run (models/lockstep.py)."""
        if self.batched:
            return lockstep_map(fn, items, concurrency or self.max_concurrency, on_abort=self.interrupt)
        return bounded_map(fn, items, concurrency or self.max_concurrency, on_abort=self.interrupt)

    def interrupt(self) -> None:
        """Stop the generations running now at their next token (they raise Cancelled); later ones run as usual.
        A remote backend lets replies in flight arrive (a rerun uses the logged ones)."""

    def close(self) -> None:
        pass


class Interruptible:
    """For in-process backends: `interrupt()` ends every generation started before it, at its next token, and
    `close()` frees the weights only once the generation holding `_lock` has left (freeing them under a running
    decode crashes the process)."""

    _lock: threading.Lock
    _epoch: int = 0

    def interrupt(self) -> None:
        self._epoch += 1
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.cancel_all()

    def _watched(self, stream: Iterator[Chunk], epoch: int) -> Iterator[Chunk]:
        """A batcher's stream that raises Cancelled once `interrupt()` has run since `epoch` (the batcher also
        wakes a reader waiting for its next token)."""
        try:
            for chunk in stream:
                self._check(epoch)
                yield chunk
        finally:
            stream.close()

    def _check(self, epoch: int) -> None:
        if self._epoch != epoch:
            raise Cancelled(f"{getattr(self, 'name', 'model')}: generation stopped")

    def _quiesce(self, timeout: float = 30.0) -> bool:
        """Stop what runs and wait for the generation lock (True when taken: release it after freeing)."""
        self.interrupt()
        return self._lock.acquire(timeout=timeout)


def collect(chunks: Iterator[Chunk], model: str) -> Completion:
    t0 = time.perf_counter()
    parts, last = [], Chunk("")
    for c in chunks:
        parts.append(c.text)
        last = c
    return Completion("".join(parts), last.finish_reason or "stop", last.prompt_tokens, last.completion_tokens,
                      model, time.perf_counter() - t0)


def bounded_map(fn: Callable[[T], R], items: Iterable[T], concurrency: int,
                on_abort: Callable[[], None] | None = None) -> Iterator[tuple[int, R | BaseException]]:
    """`Model.map`'s loop. When the consumer stops early (Ctrl-C, an error, a break), requests not started are
    dropped and `on_abort` stops the running ones, so the way out does not wait for whole generations."""
    it = iter(enumerate(items))
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        pending: dict[Future, int] = {}

        def fill() -> None:
            while len(pending) < max(1, concurrency):
                try:
                    i, item = next(it)
                except StopIteration:
                    return
                pending[pool.submit(fn, item)] = i

        try:
            fill()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    err = fut.exception()
                    yield i, (err if err is not None else fut.result())
                fill()
        except BaseException:
            for fut in pending:
                fut.cancel()
            if on_abort is not None:
                on_abort()
            raise


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut text at the earliest stop string; True when one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
