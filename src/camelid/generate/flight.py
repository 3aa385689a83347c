"""Teacher requests kept in flight while earlier replies are processed, handed back in the order they were sent.

`Model.map` runs a fixed list; generation learns its next requests from the replies (Self-Instruct's instance
requests come from the bootstrap replies) and sends the next round before the current one is written (Alpaca),
so requests are added as they become known. At most `concurrency` run at once, as with `Model.map`; the rest
wait in the queue, in order. Processing in submission order keeps the data independent of the concurrency and
of which reply comes back first.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from camelid.core.io import CamelidError
from camelid.models.base import ContextLengthError, ModelError


class Flight:
    """A FIFO of requests: `submit` sends (or queues) one, `next` waits for the oldest and returns it."""

    def __init__(self, concurrency: int):
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="camelid-request")
        self._queue: deque[tuple[Any, Future]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, fn: Callable[[Any], Any], item: Any, tag: Any = None) -> None:
        self._queue.append((tag, self._pool.submit(fn, item)))

    def ready(self) -> bool:
        """Whether the oldest request has its result (taking it will not wait)."""
        return bool(self._queue) and self._queue[0][1].done()

    def next(self) -> tuple[Any, Any]:
        """(tag, result) of the oldest request, waiting for it. A ModelError is returned as the result (that one
        request failed and is logged); a prompt too long for the model stops the run; anything else is raised."""
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
        while self._queue:
            self._queue.popleft()[1].cancel()

    def close(self) -> None:
        self.cancel()
        self._pool.shutdown(wait=True)
