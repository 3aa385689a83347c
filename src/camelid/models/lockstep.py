"""Reproducible batches for `Model.map` over a local batching backend: the calls of a wave in lockstep.

`map(fn, items)` runs up to `concurrency` calls of `fn` at once: one wave. A local backend's requests made inside a
wave are not queued as they come: the wave waits until each of its calls has made its next request or returned,
then submits those requests together, in item order, as one group (`submit_group` of models/batching.py and
models/hf_batching.py), which runs alone on the backend. The batches are then a function of the items alone, not of
thread timing, so the same items and seeds give the same outputs run after run. A call that makes several requests
one after the other (a two-turn answer, a judge asked twice) takes part in one group per request. Results come back
in item order; the next wave starts when the last call of this one returns.

Requests made outside a wave (the server's) keep joining a running batch whenever a slot frees.
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

_local = threading.local()


class Wave:
    """The calls of one wave: `request` blocks until every live call has a request in (or has returned)."""

    def __init__(self, n: int):
        self._cv = threading.Condition()
        self._active = n
        self._pending: dict[int, tuple[Any, Any, dict]] = {}

    def request(self, index: int, batcher, job) -> Iterator:
        slot: dict = {}
        with self._cv:
            self._pending[index] = (batcher, job, slot)
            self._dispatch()
            while "stream" not in slot:
                self._cv.wait()
        if "error" in slot:
            raise slot["error"]
        return slot["stream"]

    def done(self) -> None:
        with self._cv:
            self._active -= 1
            self._dispatch()

    def _dispatch(self) -> None:
        if not self._pending or len(self._pending) < self._active:
            return
        groups: dict[int, tuple[Any, list]] = {}
        for index in sorted(self._pending):
            batcher, job, slot = self._pending[index]
            groups.setdefault(id(batcher), (batcher, []))[1].append((job, slot))
        self._pending = {}
        for batcher, entries in groups.values():
            try:
                streams = batcher.submit_group([job for job, _ in entries])
            except BaseException as e:  # handed to every caller of the group
                for _, slot in entries:
                    slot["stream"], slot["error"] = None, e
                continue
            for (_, slot), stream in zip(entries, streams):
                slot["stream"] = stream
        self._cv.notify_all()


def submit(batcher, job) -> Iterator:
    """Queue one prepared request: with the other calls of this thread's wave, else on its own."""
    wave = getattr(_local, "wave", None)
    if wave is None:
        return batcher.submit_group([job])[0]
    return wave.request(_local.index, batcher, job)


def call(wave: Wave, index: int, fn: Callable, item: Any) -> Any:
    """`fn(item)` as call `index` of `wave`: its requests to a local batching backend wait for the wave's others."""
    _local.wave, _local.index = wave, index
    try:
        return fn(item)
    finally:
        _local.wave = None
        wave.done()


def lockstep_map(fn: Callable, items: Iterable, concurrency: int,
                 on_abort: Callable[[], None] | None = None) -> Iterator[tuple[int, Any]]:
    """(index, result or exception) for each item, in order, `concurrency` calls per wave. When the consumer stops
    early (Ctrl-C, an error, a break), later waves are never started and `on_abort` stops the running one."""
    it = iter(items)
    size = max(1, concurrency)
    base = 0
    with ThreadPoolExecutor(max_workers=size) as pool:
        try:
            while True:
                wave_items = list(itertools.islice(it, size))
                if not wave_items:
                    return
                wave = Wave(len(wave_items))
                futures = [pool.submit(call, wave, k, fn, x) for k, x in enumerate(wave_items)]
                for k, fut in enumerate(futures):
                    err = fut.exception()
                    yield base + k, (err if err is not None else fut.result())
                base += len(wave_items)
        except BaseException:
            if on_abort is not None:
                on_abort()
            raise
