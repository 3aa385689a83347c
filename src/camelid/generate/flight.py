"""Teacher requests kept in flight while earlier replies are processed, handed back in the order they were sent.

`Model.map` runs a fixed list; generation learns its next requests from the replies (Self-Instruct's instance
requests come from the bootstrap replies) and sends the next round before the current one is written (Alpaca),
so requests are added as they become known. At most `concurrency` run at once, as with `Model.map`; the rest
wait in the queue, in order. Processing in submission order keeps the data independent of the concurrency and
of which reply comes back first.

Over a local batching backend (`Model.batched`) the requests go out in waves of `concurrency`, formed in submission
order, whose requests decode as one group (models/lockstep.py): a wave leaves when it is full, or when `next` needs
its oldest request. Which requests share a decode step is then a function of the requests, not of thread timing, so
a seed gives the same data run after run.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from camelid.core.io import CamelidError
from camelid.models import lockstep
from camelid.models.base import ContextLengthError, ModelError


class Flight:
    """A FIFO of requests: `submit` sends (or queues) one, `next` waits for the oldest and returns it."""

    def __init__(self, concurrency: int, batched: bool = False):
        self._size = max(1, concurrency)
        self._batched = batched
        # a batched wave's calls all wait for each other's requests: room for the next wave while one runs
        self._pool = ThreadPoolExecutor(max_workers=self._size * (2 if batched else 1),
                                        thread_name_prefix="camelid-request")
        self._queue: deque[tuple[Any, Future]] = deque()
        self._held: list[tuple[Callable[[Any], Any], Any, Future]] = []  # the next wave, not sent yet

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, fn: Callable[[Any], Any], item: Any, tag: Any = None) -> None:
        if not self._batched:
            self._queue.append((tag, self._pool.submit(fn, item)))
            return
        fut: Future = Future()
        self._held.append((fn, item, fut))
        self._queue.append((tag, fut))
        if len(self._held) >= self._size:
            self._send()

    def _send(self) -> None:
        held, self._held = self._held, []
        wave = lockstep.Wave(len(held))
        for k, (fn, item, fut) in enumerate(held):
            self._pool.submit(_run, fut, wave, k, fn, item)

    def ready(self) -> bool:
        """Whether the oldest request has its result (taking it will not wait)."""
        return bool(self._queue) and self._queue[0][1].done()

    def next(self) -> tuple[Any, Any]:
        """(tag, result) of the oldest request, waiting for it. A ModelError is returned as the result (that one
        request failed and is logged); a prompt too long for the model stops the run; anything else is raised."""
        if self._held and len(self._queue) <= len(self._held):  # the oldest is in the wave not sent yet
            self._send()
        tag, fut = self._queue.popleft()
        err = fut.exception()
        if err is None:
            return tag, fut.result()
        if isinstance(err, ContextLengthError):
            raise CamelidError(f"{err} (lower --max-tokens, or use a model with a longer context)")
        if isinstance(err, ModelError):
            return tag, err
        raise err

    def cancel(self) -> None:
        """Forget every request not taken yet; those not started are never sent (running ones finish and are
        logged: a later run on the same output uses their replies)."""
        self._held = []
        while self._queue:
            self._queue.popleft()[1].cancel()

    def close(self) -> None:
        self.cancel()
        self._pool.shutdown(wait=True)


def _run(fut: Future, wave: lockstep.Wave, index: int, fn: Callable[[Any], Any], item: Any) -> None:
    """One call of a batched wave, its result in `fut`; a cancelled one leaves the wave without a request."""
    if not fut.set_running_or_notify_cancel():
        wave.done()
        return
    try:
        fut.set_result(lockstep.call(wave, index, fn, item))
    except BaseException as e:
        fut.set_exception(e)
