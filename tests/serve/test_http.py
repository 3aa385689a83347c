"""HTTP details: the served OpenAPI document describes the request bodies and declares the statuses really sent, HEAD
works where GET does, 405 names the allowed methods, and Retry-After follows the measured service time."""

from __future__ import annotations

import math
import threading
import time

import httpx

from camelid.serve.gate import Gate
from camelid.serve.server import BackgroundServer, create_app
from tests.serve.helpers import assert_error


def test_openapi_describes_the_post_bodies_and_the_errors_really_returned(server):
    doc = httpx.get(server.url + "/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for path, name in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest")):
        op = doc["paths"][path]["post"]
        assert op["requestBody"]["required"] is True
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{name}"
        assert {"400", "404", "413", "415", "429", "502", "503", "504"} <= set(op["responses"])
    chat = schemas["ChatCompletionRequest"]
    assert {"messages"} <= set(chat["required"]) and "response_format" in chat["properties"]
    assert chat.get("additionalProperties") is False  # unknown options are refused, and the schema says so
    assert "prompt" in schemas["CompletionRequest"]["required"]
    # no 422 anywhere (errors are 400/404 in OpenAI's shape), and every $ref resolves
    text = httpx.get(server.url + "/openapi.json").text
    assert '"422"' not in text and "HTTPValidationError" not in text
    model = doc["paths"]["/v1/models/{name}"]["get"]["responses"]
    assert model["404"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/Error"
    for ref in {part.split('"')[0] for part in text.split('"$ref":"')[1:]}:
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    assert_error(httpx.get(server.url + "/v1/models/nope"), 404, "model", "model_not_found")


def test_head_works_where_get_does_and_405_names_the_allowed_methods(server):
    for path in ("/", "/health"):
        r = httpx.head(server.url + path)
        assert r.status_code == 200 and r.content == b"", path
    r = httpx.get(server.url + "/v1/chat/completions")
    assert_error(r, 405, code="method_not_allowed")
    assert r.headers["Allow"] == "POST"
    r = httpx.put(server.url + "/health")
    assert r.status_code == 405 and set(r.headers["Allow"].split(", ")) == {"GET", "HEAD"}


def test_retry_after_is_the_measured_service_time_times_the_queue_ahead(embedded):
    """A full queue: the 429's Retry-After against the time the queue then takes to drain (both printed). One slot:
    requests that share the batch's decode steps would each take longer than the one measured alone."""
    app = create_app(embedded, concurrency=1, max_queue=3, page=False)
    gate = app.state.gate

    def body(i: int) -> dict:  # distinct prompts: none is served from llama.cpp's prompt cache
        return {"messages": [{"role": "user", "content": f"Count from {i} to {i + 100}."}], "max_tokens": 24,
                "temperature": 0}

    with BackgroundServer(app) as srv:
        httpx.post(srv.url + "/v1/chat/completions", json=body(0), timeout=120)  # one measurement first
        while gate.measured < 1:  # (the slot is freed just after the answer is sent)
            time.sleep(0.01)
        service = gate.service_s
        results = []
        threads = [threading.Thread(target=lambda i=i: results.append(
            httpx.post(srv.url + "/v1/chat/completions", json=body(i), timeout=120).status_code))
            for i in range(1, 5)]
        for t in threads:
            t.start()
        while gate.admitted < 4:
            time.sleep(0.01)
        t0 = time.monotonic()
        r = httpx.post(srv.url + "/v1/chat/completions", json=body(9), timeout=60)
        assert_error(r, 429, code="rate_limit_exceeded")
        retry_after = int(r.headers["Retry-After"])
        for t in threads:
            t.join()
        drained = time.monotonic() - t0
        assert sorted(results) == [200] * 4
    # 4 generations ahead (1 just started, 3 queued), one slot: 4 service times (queue time left out), rounded up
    print(f"Retry-After {retry_after} s; queue drained in {drained:.2f} s; service time {service:.2f} s")
    assert abs(retry_after - math.ceil(service * 4)) <= 1


def test_the_gates_estimate_leaves_queue_time_out():
    gate = Gate(concurrency=2, max_queue=4)
    for _ in range(6):
        gate.admit()
    gate.leave(1.5)  # a generation that held its slot 1.5 s: the first measurement replaces the guess
    assert gate.service_s == 1.5
    gate.admit()
    now = time.perf_counter()
    gate.slot_starts = {threading.Event(): now - 0.5, threading.Event(): now}  # two running, 0.5 s and 0 s in
    # full: 6 admitted on 2 slots: 1.0 + 1.5 s left of the running ones, 4 queued at 1.5 s, 2 at a time
    try:
        gate.admit()
    except Exception as e:
        assert e.headers["Retry-After"] == str(math.ceil((1.0 + 1.5 + 4 * 1.5) / 2))
    else:
        raise AssertionError("a seventh request was admitted")
