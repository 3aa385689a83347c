"""The official `openai` client against `camelid serve` with the embedded model: chat and completions, plain and
streamed, usage and finish_reason, plus /health and the access log."""

from __future__ import annotations

import logging
import time

import httpx

from camelid.models import Sampling
from tests.serve.helpers import MODEL, forget, off_main_thread, sse_events

HI = [{"role": "user", "content": "Write the number 2 in words."}]


def test_models_lists_the_served_model(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_chat_completion_answers_like_the_backend_with_usage(client, embedded):
    forget(embedded)
    r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=8, temperature=0)
    forget(embedded)
    direct = off_main_thread(embedded.chat, HI, Sampling(temperature=0, max_tokens=8))
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == direct.text
    assert r.choices[0].finish_reason == direct.finish_reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (direct.prompt_tokens, direct.completion_tokens)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_chat_equals_the_plain_answer_and_reports_usage(client, embedded):
    forget(embedded)
    plain = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=8, temperature=0)
    forget(embedded)
    stream = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stops_at_the_templates_end_of_turn(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi."}],
                                       max_tokens=64, temperature=0)
    assert r.choices[0].finish_reason == "stop"
    assert "<|im_end|>" not in r.choices[0].message.content and "<|im_start|>" not in r.choices[0].message.content


def test_completions_plain_and_streamed_agree(client, embedded):
    prompt = "The capital of France is"
    forget(embedded)
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0)
    assert r.object == "text_completion"
    forget(embedded)
    direct = off_main_thread(embedded.complete, prompt, Sampling(temperature=0, max_tokens=6))
    assert r.choices[0].text == direct.text
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    forget(embedded)
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens
    stopped = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, stop=["."])
    assert stopped.choices[0].finish_reason == "stop" and "." not in stopped.choices[0].text


def test_raw_stream_is_openai_sse_ending_with_done(server):
    body = {"model": MODEL, "messages": HI, "max_tokens": 4, "temperature": 0, "stream": True}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[-1] == "[DONE]" and r.text.endswith("data: [DONE]\n\n")
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])


def test_every_request_writes_one_access_log_line(server, caplog):
    with caplog.at_level(logging.INFO, logger="camelid.serve"):
        httpx.post(server.url + "/v1/chat/completions", json={"messages": HI, "max_tokens": 3, "temperature": 0},
                   timeout=60)
        httpx.post(server.url + "/v1/chat/completions", json={"messages": []}, timeout=60)
        # the line is written once the last byte is sent, so the client can see its answer a moment before:
        # wait for it. (A previous test's stream may also log late: pick out this test's lines.)
        deadline = time.monotonic() + 10
        while True:
            lines = [r.getMessage() for r in caplog.records if r.name == "camelid.serve"]
            ok = [x for x in lines if "completion_tokens=3 " in x]
            bad = [x for x in lines if x.startswith("POST /v1/chat/completions 400 ")]
            if (ok and bad) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    assert len(ok) == 1 and len(bad) == 1, lines
    assert ok[0].startswith("POST /v1/chat/completions 200 prompt_tokens=") and "latency_ms=" in ok[0]
