"""A hostile-request corpus against a real `camelid serve` subprocess on loopback: every request gets a 4xx with the
OpenAI error body, and a good request then succeeds on the same keep-alive connection."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.serve.test_serve_cli import free_port

MAX_BODY_MIB = 1  # the server under test runs with --max-body-mib 1 (the default is 8)
USER = [{"role": "user", "content": "hi"}]
GOOD = {"messages": USER, "max_tokens": 2, "temperature": 0}


def chat(**kw) -> dict:
    return {"messages": USER, "max_tokens": 2, **kw}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


JSON = {"Content-Type": "application/json"}
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"

# (id, method, path, body: bytes | dict | None, extra headers, expected status, expected param or None)
CORPUS = [
    # --- bodies the parser must bound: size, depth, encoding, numbers
    ("body over the limit", "POST", CHAT, b'{"messages": [{"role": "user", "content": "' + b"x" * (MAX_BODY_MIB << 20)
     + b'"}]}', JSON, 413, None),
    ("nested 1000 deep in a message", "POST", CHAT,
     ('{"messages": [{"role": "user", "content": ' + nested(1000) + "}]}").encode(), JSON, 400, None),
    ("nested 100,000 deep at the top", "POST", CHAT, nested(100_000).encode(), JSON, 400, None),
    ("nested 200 deep in an unknown field", "POST", CHAT,
     ('{"messages": [{"role": "user", "content": "hi"}], "x": ' + nested(200) + "}").encode(), JSON, 400, None),
    ("lone surrogate in a message", "POST", CHAT,
     b'{"messages": [{"role": "user", "content": "a\\ud800b"}], "max_tokens": 2}', JSON, 400,
     "messages[0].content"),
    ("lone low surrogate in a completion prompt", "POST", COMPLETIONS, b'{"prompt": "\\udc00", "max_tokens": 2}',
     JSON, 400, "prompt"),
    ("lone surrogate in a stop string", "POST", CHAT,
     b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud83d"], "max_tokens": 2}', JSON, 400,
     "stop[0]"),
    ("lone surrogate in a key", "POST", CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "\\ud800": 1}',
     JSON, 400, None),
    ("invalid UTF-8", "POST", CHAT, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', JSON, 400, None),
    ("NaN temperature", "POST", CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
     JSON, 400, None),
    ("Infinity top_p", "POST", CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "top_p": -Infinity}',
     JSON, 400, None),
    ("an integer of 5000 digits", "POST", CHAT,
     b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1' + b"0" * 5000 + b"}", JSON, 400, None),
    ("seed beyond 64 bits", "POST", CHAT, chat(seed=2 ** 70), JSON, 400, "seed"),
    ("bad json", "POST", CHAT, b'{"messages": [', JSON, 400, None),
    ("empty body", "POST", CHAT, b"", JSON, 400, None),
    ("a JSON string", "POST", CHAT, b'"hello"', JSON, 400, None),
    # --- inputs the backend cannot run
    ("empty prompt", "POST", COMPLETIONS, {"prompt": "", "max_tokens": 2}, JSON, 400, "prompt"),
    ("list of one empty prompt", "POST", COMPLETIONS, {"prompt": [""], "max_tokens": 2}, JSON, 400, "prompt"),
    ("empty prompt list", "POST", COMPLETIONS, {"prompt": [], "max_tokens": 2}, JSON, 400, "prompt"),
    ("streamed empty prompt", "POST", COMPLETIONS, {"prompt": "", "stream": True}, JSON, 400, "prompt"),
    ("prompt over the context", "POST", COMPLETIONS, {"prompt": "word " * 1500, "max_tokens": 2}, JSON, 400,
     "prompt"),
    ("logit_bias token beyond the vocabulary", "POST", CHAT, chat(logit_bias={"99999999": 5}), JSON, 400,
     "logit_bias"),
    ("logit_bias key not a token id", "POST", CHAT, chat(logit_bias={"hello": 5}), JSON, 400, "logit_bias"),
    ("logit_bias value beyond 100", "POST", CHAT, chat(logit_bias={"42": 1000}), JSON, 400, "logit_bias"),
    ("json schema that is not a schema", "POST", CHAT,
     chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}),
     JSON, 400, "response_format"),
    # schemas whose grammar llama.cpp cannot parse or no token can satisfy (these crashed the process)
    *[(f"json schema {name}", "POST", CHAT,
       chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}), JSON, 400,
       "response_format")
      for name, schema in [("with an empty enum", {"enum": []}), ("with an empty anyOf", {"anyOf": []}),
                           ("with no type", {"type": []}), ("asking for a NUL", {"const": "a\u0000"}),
                           ("with a NUL pattern", {"type": "string", "pattern": "^\u0000$"}),
                           ("with a NUL regex escape", {"type": "string", "pattern": "^[\\x00]$"}),
                           ("with a looping $ref", {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}})]],
    ("roles out of order", "POST", CHAT, {"messages": [{"role": "assistant", "content": "x"}]}, JSON, 400,
     "messages"),
    # --- options: honoured or refused, never ignored
    ("response_format of an unknown type", "POST", CHAT, chat(response_format={"type": "nope"}), JSON, 400,
     "response_format.type"),
    ("json_schema without a schema", "POST", CHAT, chat(response_format={"type": "json_schema"}), JSON, 400,
     "response_format"),
    ("tools", "POST", CHAT, chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), JSON,
     400, "tools"),
    ("tool_choice", "POST", CHAT, chat(tool_choice="required"), JSON, 400, "tool_choice"),
    ("functions", "POST", CHAT, chat(functions=[{"name": "f"}]), JSON, 400, "functions"),
    ("logprobs", "POST", CHAT, chat(logprobs=True), JSON, 400, "logprobs"),
    ("top_logprobs", "POST", CHAT, chat(top_logprobs=3), JSON, 400, "top_logprobs"),
    ("audio output", "POST", CHAT, chat(modalities=["text", "audio"]), JSON, 400, "modalities"),
    ("stored completion", "POST", CHAT, chat(store=True), JSON, 400, "store"),
    ("reasoning effort", "POST", CHAT, chat(reasoning_effort="high"), JSON, 400, "reasoning_effort"),
    ("two choices", "POST", CHAT, chat(n=2), JSON, 400, "n"),
    ("best_of", "POST", COMPLETIONS, {"prompt": "x", "best_of": 3}, JSON, 400, "best_of"),
    ("unknown option", "POST", CHAT, chat(frobnicate=True), JSON, 400, "frobnicate"),
    ("unknown message field", "POST", CHAT, {"messages": [{"role": "user", "content": "x", "mood": "sad"}]}, JSON,
     400, "messages[0].mood"),
    ("tool role", "POST", CHAT, {"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, JSON, 400,
     None),
    # --- types are strict, for every number and flag alike
    ("temperature a numeric string", "POST", CHAT, chat(temperature="0.5"), JSON, 400, "temperature"),
    ("temperature a bool", "POST", CHAT, chat(temperature=True), JSON, 400, "temperature"),
    ("top_p a numeric string", "POST", CHAT, chat(top_p="1"), JSON, 400, "top_p"),
    ("presence_penalty a numeric string", "POST", CHAT, chat(presence_penalty="1"), JSON, 400, "presence_penalty"),
    ("frequency_penalty beyond 2", "POST", CHAT, chat(frequency_penalty=2.5), JSON, 400, "frequency_penalty"),
    ("max_tokens a numeric string", "POST", CHAT, chat(max_tokens="8"), JSON, 400, "max_tokens"),
    ("max_tokens a float", "POST", CHAT, chat(max_tokens=8.0), JSON, 400, "max_tokens"),
    ("max_completion_tokens beyond the context", "POST", CHAT, chat(max_completion_tokens=10 ** 6), JSON, 400,
     "max_completion_tokens"),
    ("stream a string", "POST", CHAT, chat(stream="true"), JSON, 400, "stream"),
    ("seed a float", "POST", CHAT, chat(seed=1.5), JSON, 400, "seed"),
    ("n a string", "POST", CHAT, chat(n="1"), JSON, 400, "n"),
    ("stop a number", "POST", CHAT, chat(stop=5), JSON, 400, "stop"),
    ("include_usage a string", "POST", CHAT, chat(stream=True, stream_options={"include_usage": "yes"}), JSON,
     400, "stream_options.include_usage"),
    ("model a number", "POST", CHAT, chat(model=5), JSON, 400, "model"),
    ("unknown model", "POST", CHAT, chat(model="gpt-17"), JSON, 404, "model"),
    # --- content types: a form or text/plain POST is what a foreign page sends without a preflight
    ("text/plain body", "POST", CHAT, GOOD, {"Content-Type": "text/plain"}, 415, None),
    ("form body", "POST", CHAT, b"messages=hi", {"Content-Type": "application/x-www-form-urlencoded"}, 415, None),
    ("no content type", "POST", COMPLETIONS, {"prompt": "hi"}, {}, 415, None),
    # --- browsers and DNS rebinding
    ("foreign Host", "POST", CHAT, GOOD, {**JSON, "Host": "evil.example:8000"}, 403, None),
    ("foreign Host on a GET", "GET", "/v1/models", None, {"Host": "attacker.test"}, 403, None),
    ("cross-origin text/plain POST", "POST", CHAT, GOOD, {"Content-Type": "text/plain",
                                                          "Origin": "http://evil.example"}, 403, None),
    ("cross-origin JSON POST", "POST", CHAT, GOOD, {**JSON, "Origin": "http://evil.example"}, 403, None),
    ("null origin", "POST", CHAT, GOOD, {**JSON, "Origin": "null"}, 403, None),
    ("preflight from a foreign origin", "OPTIONS", CHAT, None, {
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}, 403, None),
    # --- paths and methods
    ("unknown path", "GET", "/v1/nothing", None, {}, 404, None),
    ("GET on a POST endpoint", "GET", CHAT, None, {}, 405, None),
    ("DELETE on models", "DELETE", "/v1/models", None, {}, 405, None),
    ("unknown model path", "GET", "/v1/models/gpt-17", None, {}, 404, "model"),
]


@pytest.fixture(scope="module")
def serve_proc():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "camelid", "serve", "--port", str(port), "--n-ctx", "1024",
                             "--max-body-mib", str(MAX_BODY_MIB), "--max-queue", "4"],
                            env={k: v for k, v in os.environ.items() if k != "CAMELID_API_KEY"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        yield port
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert " 500 " not in err and "Traceback" not in err, err[-3000:]


def send(conn: http.client.HTTPConnection, method: str, path: str, body, headers: dict) -> tuple[int, dict, bytes]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    if data is not None:
        conn.putheader("Content-Length", str(len(data)))
    conn.endheaders(data)
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read()


@pytest.mark.parametrize("method,path,body,headers,status,param", [c[1:] for c in CORPUS],
                         ids=[c[0] for c in CORPUS])
def test_hostile_request_gets_a_4xx_and_the_connection_still_serves(serve_proc, method, path, body, headers,
                                                                    status, param):
    conn = http.client.HTTPConnection("127.0.0.1", serve_proc, timeout=60)
    try:
        got, resp_headers, raw = send(conn, method, path, body, headers)
        assert got == status, raw[:500]
        err = json.loads(raw)["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        assert "\n" not in err["message"]
        if param is not None:
            assert err["param"] == param, err
        if status == 405:
            assert resp_headers["allow"]
        sock = conn.sock
        assert sock is not None, "the server closed the connection"
        got, _, raw = send(conn, "POST", CHAT, GOOD, JSON)
        assert got == 200, raw[:500]
        assert conn.sock is sock  # the same keep-alive connection
        assert json.loads(raw)["usage"]["completion_tokens"] >= 1
    finally:
        conn.close()
