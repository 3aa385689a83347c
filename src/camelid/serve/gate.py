"""The gate in front of the model: at most `concurrency` generations run and `max_queue` more wait; the next request
gets 429 with a Retry-After from the measured service time and the queue length.

Generations are synchronous generators (llama.cpp holds a lock: one at a time), so each request that gets a model slot
runs its generator in its own worker thread and hands chunks to the event loop through an asyncio queue. A client that
disconnects (queued or streaming) sets a cancel flag; the worker closes the generator at the next token, which ends
llama.cpp's token loop and releases its lock, and only then frees the slot.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any, AsyncIterator, Callable, Iterator

from fastapi import Request

from camelid.models.base import Chunk
from camelid.serve.protocol import APIError

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
        self.service_s = 2.0  # moving average of a generation's seconds in its slot (queue time left out)
        self.measured = 0  # generations behind that average
        self.slot_starts: dict[threading.Event, float] = {}  # running generations: when each got its slot
        self.workers: dict[threading.Thread, threading.Event] = {}  # live generations and their cancel flags

    @property
    def sem(self) -> asyncio.Semaphore:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.concurrency)
        return self._sem

    def retry_after(self) -> int:
        """Seconds until the work admitted now is likely done (the queue drained): what is left of each running
        generation plus every queued one, at the measured service time, spread over the slots."""
        now = time.perf_counter()
        running = sum(max(0.0, self.service_s - (now - t)) for t in list(self.slot_starts.values()))
        queued = max(0, self.admitted - len(self.slot_starts))
        return min(600, max(1, math.ceil((running + queued * self.service_s) / self.concurrency)))

    def admit(self) -> None:
        if self.admitted >= self.concurrency + self.max_queue:
            raise APIError(429, f"the server is busy ({self.admitted} requests running or queued); retry shortly",
                           type="rate_limit_exceeded", code="rate_limit_exceeded",
                           headers={"Retry-After": str(self.retry_after())})
        self.admitted += 1
        self.total += 1

    def leave(self, service_s: float | None = None) -> None:
        """A request is done; `service_s`: the seconds its generation held a slot (None: it never got one)."""
        self.admitted -= 1
        if service_s is not None:
            # the first measurement replaces the guess; then a moving average
            self.service_s = service_s if not self.measured else 0.8 * self.service_s + 0.2 * service_s
            self.measured += 1

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
    t0 = 0.0  # set when the generation gets its slot: the service time leaves the queue time out

    def post(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # loop closed: the server is shutting down
            cancel.set()

    def finished(service_s: float | None) -> None:
        gate.slot_starts.pop(cancel, None)
        gate.running -= 1
        gate.sem.release()
        gate.leave(service_s)

    def work() -> None:
        service_s = None  # measured only for a generation that ran to its end (not refused, failed or cancelled)
        try:
            chunks = start()
            try:
                for c in chunks:
                    if cancel.is_set():
                        break
                    post(c)
                else:
                    service_s = time.perf_counter() - t0
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
                loop.call_soon_threadsafe(finished, service_s)
            except RuntimeError:
                pass

    acquired = False
    try:
        await gate.sem.acquire()
        acquired = True
        t0 = time.perf_counter()
        gate.slot_starts[cancel] = t0
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
                gate.slot_starts.pop(cancel, None)
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
