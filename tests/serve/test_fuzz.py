"""A bounded hypothesis fuzz of both generation endpoints: request bodies built from the request models' fields with
valid, wrong-typed, out-of-range and hostile values (plus raw bytes) never get a 5xx, and each answer is either a 200
or an OpenAI error body."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camelid.serve.protocol import ChatCompletionRequest, CompletionRequest

# any JSON value, small (deep nesting and odd strings come from the field strategies below)
JUNK = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)
ODD_TEXT = st.sampled_from(["", " ", "\x00", "\ud800", "<|im_end|>", "<|im_start|>assistant\n", "\u202e", "é" * 50,
                            "한국어", "\n" * 30, "{", "a" * 3000])
TEXT = st.text(max_size=40) | ODD_TEXT
NUMBER = st.floats(allow_nan=False, min_value=-5, max_value=5) | st.integers(-3, 3) | st.sampled_from(
    ["0.5", True, None, 1e308, -1e308, 2 ** 70])
SMALL_TOKENS = st.sampled_from([1, 2, 3, 0, -1, "2", 2.0, None, True, 10 ** 9])  # never a long generation
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "", "USER"]),
     "content": TEXT | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]),
                                                       "text": TEXT}), max_size=2) | JUNK},
    optional={"name": TEXT, "tool_calls": JUNK})
RESPONSE_FORMAT = st.sampled_from([{"type": "text"}, {"type": "json_object"}, {"type": "nope"}, {"type": "json_schema"},
                                   {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
                                   {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}},
                                   {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nope"}}},
                                   {"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}]) | JUNK
COMMON = {
    "model": st.sampled_from(["SmolLM2-135M-Instruct", "gpt-4", ""]) | JUNK,
    "temperature": NUMBER, "top_p": NUMBER, "presence_penalty": NUMBER, "frequency_penalty": NUMBER,
    "seed": st.integers() | JUNK,
    "stop": TEXT | st.lists(TEXT, max_size=20) | JUNK,
    "stream": st.booleans() | JUNK,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | JUNK}) | JUNK,
    "n": st.integers(0, 3) | JUNK,
    "logprobs": st.booleans() | st.integers(0, 5) | JUNK,
    "logit_bias": st.dictionaries(st.sampled_from(["1", "42", "49151", "49152", "-1", "x", "1e3"]),
                                  st.floats(-150, 150) | JUNK, max_size=3) | JUNK,
    "user": TEXT,
    "frobnicate": JUNK,
}
CHAT = st.fixed_dictionaries(
    {"messages": st.lists(MESSAGE, max_size=3) | JUNK, "max_tokens": SMALL_TOKENS},
    optional={**COMMON, "response_format": RESPONSE_FORMAT, "tools": JUNK, "tool_choice": JUNK,
              "max_completion_tokens": SMALL_TOKENS, "top_logprobs": JUNK, "modalities": JUNK, "store": JUNK})
COMPLETION = st.fixed_dictionaries(
    {"prompt": TEXT | st.lists(TEXT, max_size=2) | JUNK, "max_tokens": SMALL_TOKENS},
    optional={**COMMON, "echo": JUNK, "suffix": JUNK, "best_of": JUNK})
CHAT_KEYS = {"messages", "max_tokens", *COMMON, "response_format", "tools", "tool_choice", "max_completion_tokens",
             "top_logprobs", "modalities", "store"}
COMPLETION_KEYS = {"prompt", "max_tokens", *COMMON, "echo", "suffix", "best_of"}


def encode(body: dict) -> bytes:
    return json.dumps(body).encode("utf-8", "surrogatepass")  # lone surrogates go out as \\ud800 escapes


@pytest.fixture(scope="module")
def conn(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def check(conn: httpx.Client, path: str, raw: bytes) -> None:
    r = conn.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text[:300], raw[:300])
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    elif r.headers["content-type"].startswith("text/event-stream"):
        # a failure after the 200 may only come as an error event inside the stream, never a server error
        for line in r.text.splitlines():
            if line.startswith("data: {") and '"error"' in line[:20]:
                assert json.loads(line[6:])["error"]["type"] != "server_error", line


@pytest.mark.slow
@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(body=CHAT)
def test_fuzzed_chat_requests_never_get_a_server_error(conn, body):
    check(conn, "/v1/chat/completions", encode(body))


@pytest.mark.slow
@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(body=COMPLETION)
def test_fuzzed_completion_requests_never_get_a_server_error(conn, body):
    check(conn, "/v1/completions", encode(body))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200) | JUNK.map(lambda v: json.dumps(v).encode()))
def test_fuzzed_raw_bodies_never_get_a_server_error(conn, raw):
    check(conn, "/v1/chat/completions", raw)


def test_the_fuzz_covers_the_fields_that_change_generation():
    chat_fields = set(ChatCompletionRequest.model_fields) - {"functions", "function_call", "parallel_tool_calls",
                                                             "audio", "prediction", "web_search_options",
                                                             "reasoning_effort", "metadata"}
    assert chat_fields <= CHAT_KEYS, chat_fields - CHAT_KEYS
    assert set(CompletionRequest.model_fields) <= COMPLETION_KEYS
