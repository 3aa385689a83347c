"""Teacher requests in flight over a local batching backend: waves formed in submission order, so which requests
decode together (and so the data) does not depend on thread timing. The batcher here only records the groups it is
handed (the real ones: tests/models/test_batching.py, and the embedded teacher in tests/generate/test_generate.py)."""

from __future__ import annotations

import random
import threading
import time

from camelid.generate.flight import Flight
from camelid.models import lockstep


class RecordingBatcher:
    """`submit_group` as models/batching.py has it: records each group and answers every request with itself."""

    def __init__(self):
        self.groups: list[list] = []
        self._lock = threading.Lock()

    def submit_group(self, jobs: list) -> list:
        with self._lock:
            self.groups.append(list(jobs))
        return [iter([job]) for job in jobs]


def jittered(batcher: RecordingBatcher, requests: int = 1):
    def call(item):
        out = []
        for r in range(requests):
            time.sleep(random.random() * 0.01)  # calls reach their requests in any order
            out.append(next(lockstep.submit(batcher, (item, r))))
        return out
    return call


def test_a_batched_flight_sends_full_waves_in_submission_order_and_the_rest_when_it_is_needed():
    for _ in range(5):
        batcher, flight = RecordingBatcher(), Flight(3, batched=True)
        try:
            for k in range(7):
                flight.submit(jittered(batcher), k, tag=k)
            assert len(batcher.groups) <= 2  # the 7th waits: its wave is not full and nobody needs it yet
            got = [flight.next() for _ in range(7)]
        finally:
            flight.close()
        assert got == [(k, [(k, 0)]) for k in range(7)]
        # the two full waves run side by side (their groups may reach the batcher in either order); the last is sent
        # once `next` needed it
        assert sorted(batcher.groups[:2]) == [[(0, 0), (1, 0), (2, 0)], [(3, 0), (4, 0), (5, 0)]]
        assert batcher.groups[2:] == [[(6, 0)]]


def test_calls_that_ask_twice_take_part_in_one_group_per_request():
    for _ in range(3):
        batcher, flight = RecordingBatcher(), Flight(2, batched=True)
        try:
            for k in range(4):
                flight.submit(jittered(batcher, requests=2), k, tag=k)
            got = [flight.next() for _ in range(4)]
        finally:
            flight.close()
        assert got == [(k, [(k, 0), (k, 1)]) for k in range(4)]
        # two waves run side by side, so their groups may arrive in either order; each group's members do not vary
        assert sorted(batcher.groups) == [[(0, 0), (1, 0)], [(0, 1), (1, 1)], [(2, 0), (3, 0)], [(2, 1), (3, 1)]]


def test_requests_cancelled_before_their_wave_leaves_are_never_sent():
    batcher, flight = RecordingBatcher(), Flight(4, batched=True)
    for k in range(2):
        flight.submit(jittered(batcher), k, tag=k)
    flight.cancel()
    flight.close()
    assert batcher.groups == [] and len(flight) == 0


def test_an_unbatched_flight_sends_each_request_at_once():
    batcher, flight = RecordingBatcher(), Flight(4)
    try:
        flight.submit(jittered(batcher), 0, tag=0)
        assert flight.next() == (0, [(0, 0)])
    finally:
        flight.close()
    assert batcher.groups == [[(0, 0)]]  # outside a wave: a group of its own
