"""Many clients at once, clients that vanish, and a server fronting several workers."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import pytest

from camelid.models import Sampling, load_model
from camelid.serve.server import BackgroundServer, create_app
from tests.serve.helpers import MODEL, assert_error, forget, off_main_thread, sse_events

# every test here ends on its own: each client call has a timeout, threads are joined with one, and pytest-timeout
# stops a test that still hangs (a stuck batcher) instead of the whole run
pytestmark = pytest.mark.timeout(240)
N = 8  # more clients than the gate's slots + queue would only add 429s; 8 run together in the batch
CALL_S = 90  # any one HTTP call


def ask(i: int) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"Write the number {i} in words."}],
            "max_tokens": 6, "temperature": 0, "seed": 1000 + i}


def wait_idle(app, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while app.state.gate.admitted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.state.gate.admitted == 0, app.state.gate.stats()


def test_concurrent_streams_are_answered_or_told_to_retry_and_never_mixed(server, embedded):
    before = embedded.batcher.stats()
    results: dict[int, httpx.Response | BaseException] = {}
    barrier = threading.Barrier(N)

    def client(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = httpx.post(server.url + "/v1/chat/completions", json={**ask(i), "stream": True},
                                    timeout=CALL_S)
        except BaseException as e:  # shown by the assertion below, not lost in the thread
            results[i] = e

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CALL_S + 40)
    assert not any(t.is_alive() for t in threads) and len(results) == N, results
    during = embedded.batcher.stats()

    served = 0
    for i, r in results.items():
        assert isinstance(r, httpx.Response), (i, r)
        if r.status_code == 429:
            assert_error(r, 429, code="rate_limit_exceeded")
            assert int(r.headers["Retry-After"]) >= 1
            continue
        assert r.status_code == 200, r.text
        events = sse_events(r)
        assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
        chunks = events[:-1]
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        # each stream must be its own prompt's answer: every reply names its own number (batched float paths round differently from single-sequence ones, so even the first greedy token may
        # differ from the answer decoded alone: "2 in words is" vs "The number 2 is")
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert str(i) in text, (i, text)
        served += 1
    # the requests share decode steps: up to the batch's slots run at once and max_queue=4 wait
    gate = server.app.state.gate
    assert len(results) == N and 1 <= served <= gate.concurrency + 4
    assert gate.concurrency == embedded.max_concurrency > 1
    # the server's concurrent requests went through the batch: one at a time takes a decode step for the prompt and
    # one per token after the first (6 each here); together they took far fewer, even if they arrived staggered
    assert during["steps"] - before["steps"] < 4 * served, (before, during, served)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    wait_idle(server.app)


def test_a_client_that_disconnects_mid_stream_releases_the_model(server, embedded):
    before = embedded.batcher.stats()
    body = {"messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
            "max_tokens": 600, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=CALL_S) as r:
        assert r.status_code == 200
        content = 0
        for line in r.iter_lines():
            if '"content":"' in line and '"role"' not in line:
                content += 1
                if content == 3:
                    break
    wait_idle(server.app)
    deadline = time.monotonic() + 30  # the batch drops the sequence at its next step, which may still be running
    while embedded.batcher.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    # the sequence left the batch near where the client left: far fewer tokens decoded than the 600 asked (the
    # prompt's ~40 included)
    after = embedded.batcher.stats()
    assert after["running"] == 0 and after["tokens_decoded"] - before["tokens_decoded"] < 300
    r = httpx.post(server.url + "/v1/chat/completions", json=ask(3), timeout=CALL_S)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


@pytest.fixture()
def one_at_a_time(embedded):
    """A server that runs one generation at a time, so a second request has to queue."""
    app = create_app(embedded, max_queue=4, concurrency=1)
    with BackgroundServer(app) as srv:
        srv.app = app
        yield srv


def test_a_queued_client_that_gives_up_never_runs(one_at_a_time, caplog):
    server = one_at_a_time
    long = {"messages": [{"role": "user", "content": "Count from 1 to 1000."}], "max_tokens": 600,
            "temperature": 0, "stream": True}
    with caplog.at_level(logging.INFO, logger="camelid.serve"):
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=long, timeout=CALL_S) as busy:
            lines = busy.iter_lines()  # keep the iterator: dropping it would close the stream
            assert next(lines).startswith("data: ")  # the model is now generating for this client
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(server.url + "/v1/chat/completions", json={**ask(5), "max_tokens": 2}, timeout=0.5)
            deadline = time.monotonic() + 30
            while server.app.state.gate.admitted > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.app.state.gate.stats()["queued"] == 0  # it left the queue while the model was busy
        wait_idle(server.app)
    lines = [r.getMessage() for r in caplog.records if r.name == "camelid.serve"]
    assert any(x.startswith("POST /v1/chat/completions 499 ") for x in lines), lines


def test_a_front_server_spreads_requests_over_several_workers(embedded):
    import openai

    with BackgroundServer(create_app(embedded)) as a, BackgroundServer(create_app(embedded)) as b:
        front_model = load_model(f"openai:{MODEL}", base_urls=[a.url + "/v1", b.url + "/v1"], max_retries=1)
        with BackgroundServer(create_app(front_model)) as front:
            client = openai.OpenAI(base_url=front.url + "/v1", api_key="x", max_retries=0, timeout=CALL_S)
            forget(embedded)
            plain = [client.chat.completions.create(model=MODEL, messages=ask(i)["messages"], max_tokens=4,
                                                    temperature=0) for i in range(2)]
            streamed = list(client.chat.completions.create(model=MODEL, messages=ask(0)["messages"], max_tokens=4,
                                                           temperature=0, stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
            assert text == plain[0].choices[0].message.content
            assert plain[1].usage.completion_tokens >= 1
            assert httpx.get(front.url + "/").status_code == 200  # the page on top
        counts = [srv.server.config.app.state.gate.total for srv in (a, b)]
        assert all(c >= 1 for c in counts) and sum(counts) == 3
