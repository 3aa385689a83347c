"""Bad requests get a 4xx with the OpenAI error body and the server keeps answering; backend failures get a 500
with the same shape; API keys and CORS."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import pytest

from camelid.models import load_model
from camelid.serve.server import BackgroundServer, create_app
from tests.serve.helpers import MODEL, assert_error

USER = [{"role": "user", "content": "hi"}]
TOO_LONG = [{"role": "user", "content": "word " * 2500}]  # > the fixture's 2048-token context


def chat(**kw) -> dict:
    return {"messages": USER, "max_tokens": 2, **kw}


CHAT_CASES = [
    # (id, raw body or JSON object, status, param, code)
    ("bad json", b'{"messages": [', 400, None, None),
    ("not an object", b"[1, 2]", 400, None, None),
    ("empty body", b"", 400, None, None),
    ("missing messages", {"model": MODEL}, 400, "messages", None),
    ("messages not a list", {"messages": "hi"}, 400, "messages", "invalid_value"),
    ("empty messages", {"messages": []}, 400, "messages", "invalid_value"),
    ("content wrong type", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", None),
    ("unknown role", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", None),
    ("missing content", {"messages": [{"role": "user"}]}, 400, "messages[0].content", None),
    ("image part", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "messages[0].content[0].type", None),
    ("roles out of order", {"messages": [{"role": "assistant", "content": "x"}]}, 400, "messages", None),
    ("prompt longer than context", {"messages": TOO_LONG}, 400, "messages", "context_length_exceeded"),
    ("streamed prompt longer than context", {"messages": TOO_LONG, "stream": True}, 400, "messages",
     "context_length_exceeded"),
    ("max_tokens zero", chat(max_tokens=0), 400, "max_tokens", None),
    ("max_tokens negative", chat(max_tokens=-5), 400, "max_tokens", None),
    ("max_tokens beyond context", chat(max_tokens=10**6), 400, "max_tokens", None),
    ("max_tokens a string", chat(max_tokens="5"), 400, "max_tokens", None),
    ("temperature negative", chat(temperature=-0.1), 400, "temperature", None),
    ("temperature too high", chat(temperature=2.5), 400, "temperature", None),
    ("temperature a word", chat(temperature="hot"), 400, "temperature", None),
    ("top_p too high", chat(top_p=1.5), 400, "top_p", None),
    ("stream not a bool", chat(stream="yes"), 400, "stream", None),
    ("several choices", chat(n=3), 400, "n", None),
    ("empty stop string", chat(stop=[""]), 400, "stop", None),
    ("unknown model", chat(model="gpt-17"), 404, "model", "model_not_found"),
]


@pytest.mark.parametrize("body,status,param,code", [c[1:] for c in CHAT_CASES], ids=[c[0] for c in CHAT_CASES])
def test_bad_chat_request_gets_openai_error_and_server_still_answers(server, body, status, param, code):
    kw = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else {
        "json": body}
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, **kw)
    assert_error(r, status, param, code)
    assert httpx.get(server.url + "/health", timeout=10).json()["status"] == "ok"


@pytest.mark.parametrize("body,param", [
    ({"max_tokens": 2}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt[0]"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "word " * 2500}, "prompt"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
], ids=["missing prompt", "token ids", "two prompts", "echo", "too long", "max_tokens zero"])
def test_bad_completion_request_gets_openai_error(server, body, param):
    assert_error(httpx.post(server.url + "/v1/completions", json=body, timeout=60), 400, param)


def test_wrong_path_and_method_get_openai_errors_and_a_real_request_still_works(server):
    assert_error(httpx.get(server.url + "/v1/nothing"), 404)
    assert_error(httpx.get(server.url + "/v1/chat/completions"), 405)
    assert_error(httpx.get(server.url + "/v1/models/gpt-17"), 404, "model", "model_not_found")
    r = httpx.post(server.url + "/v1/chat/completions", json=chat(temperature=0), timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_a_broken_local_backend_gets_500_with_the_error_shape_and_the_server_stays_up():
    closed = load_model("embedded", n_ctx=512)
    closed.close()
    with BackgroundServer(create_app(closed, page=False)) as srv:
        for stream in (False, True):
            r = httpx.post(srv.url + "/v1/chat/completions", json=chat(stream=stream), timeout=60)
            err = assert_error(r, 500)
            assert err["type"] == "server_error"
        assert httpx.get(srv.url + "/health").json()["status"] == "ok"
        assert httpx.get(srv.url + "/v1/models").status_code == 200


class Upstream(threading.Thread):
    """A raw TCP upstream that misbehaves: `silent` accepts and never answers, `garbage` answers 200 with a body
    that is not JSON."""

    def __init__(self, mode: str):
        super().__init__(daemon=True)
        self.mode, self.sock = mode, socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.conns: list[socket.socket] = []

    def run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.mode == "garbage":
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n"
                             b"Connection: close\r\n\r\nnot json!")
                conn.close()

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("mode,status,code", [("refused", 503, "upstream_unavailable"),
                                              ("silent", 504, "upstream_timeout"),
                                              ("garbage", 502, "upstream_error")])
def test_a_failing_openai_upstream_gets_502_503_or_504_with_a_one_line_reason(mode, status, code):
    if mode == "refused":
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
        upstream = None
    else:
        upstream = Upstream(mode)
        upstream.start()
        url = upstream.url
    # as `camelid serve --model openai:x` loads it: one retry, then the failure is answered
    front = load_model("openai:x", base_urls=[url], max_retries=1, timeout=1)
    try:
        with BackgroundServer(create_app(front, page=False)) as srv:
            for stream in (False, True):
                r = httpx.post(srv.url + "/v1/chat/completions", json=chat(stream=stream), timeout=60)
                err = assert_error(r, status, code=code)
                assert err["type"] == "server_error" and "\n" not in err["message"]
                assert "gave up after 2 tries" in err["message"]
            assert httpx.get(srv.url + "/health").json()["status"] == "ok"
    finally:
        if upstream is not None:
            upstream.close()


@pytest.fixture(scope="module")
def locked(embedded):
    with BackgroundServer(create_app(embedded, api_key="s3cret", cors_origins=["http://good.test"])) as srv:
        yield srv


def test_api_key_is_required_on_v1_but_not_on_the_page(locked):
    import openai

    url = locked.url + "/v1/chat/completions"
    assert_error(httpx.post(url, json=chat()), 401, code="invalid_api_key")
    assert_error(httpx.post(url, json=chat(), headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(httpx.get(locked.url + "/v1/models", headers={"Authorization": "s3cret"}), 401)
    # auth comes before parsing: a bad body without a key is still a 401
    assert_error(httpx.post(url, content=b"{", headers={"Content-Type": "application/json"}), 401)
    ok = openai.OpenAI(base_url=locked.url + "/v1", api_key="s3cret", max_retries=0)
    assert ok.chat.completions.create(model=MODEL, messages=USER, max_tokens=2).choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=locked.url + "/v1", api_key="nope", max_retries=0).models.list()
    assert httpx.get(locked.url + "/health").json()["auth"] is True
    assert httpx.get(locked.url + "/").status_code == 200


# the headers the official OpenAI JS SDK (openai-node) sets on every request; a browser asks for them in its
# preflight, lower-cased and sorted
JS_SDK_HEADERS = ("authorization,content-type,x-stainless-arch,x-stainless-lang,x-stainless-os,"
                  "x-stainless-package-version,x-stainless-retry-count,x-stainless-runtime,"
                  "x-stainless-runtime-version,x-stainless-timeout")


def test_cors_is_off_by_default_and_on_only_for_given_origins(server, locked):
    origin = {"Origin": "http://good.test"}
    assert_error(httpx.get(server.url + "/v1/models", headers=origin), 403, code="origin_not_allowed")
    pre = httpx.options(locked.url + "/v1/chat/completions", headers={
        **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": JS_SDK_HEADERS})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "http://good.test"
    allowed = {h.strip() for h in pre.headers["access-control-allow-headers"].split(",")}
    assert allowed >= set(JS_SDK_HEADERS.split(","))
    assert "POST" in pre.headers["access-control-allow-methods"]
    # the request itself, with the SDK's headers
    headers = {**origin, "Authorization": "Bearer s3cret", "x-stainless-lang": "js", "x-stainless-os": "Linux",
               "x-stainless-retry-count": "0", "x-stainless-timeout": "600"}
    r = httpx.post(locked.url + "/v1/chat/completions", json=chat(), headers=headers, timeout=60)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://good.test"
    evil = httpx.options(locked.url + "/v1/chat/completions", headers={
        "Origin": "http://evil.test", "Access-Control-Request-Method": "POST"})
    assert evil.status_code == 403 and "access-control-allow-origin" not in evil.headers
    served = server.app.state.gate.total
    assert_error(httpx.post(server.url + "/v1/chat/completions", content=json.dumps(chat()), timeout=60, headers={
        "Origin": "http://evil.test", "Content-Type": "text/plain"}), 403)
    assert server.app.state.gate.total == served  # refused before any generation


def test_a_loopback_server_answers_only_loopback_host_names_unless_told(embedded):
    body = chat()
    with BackgroundServer(create_app(embedded, page=False)) as srv:
        for host in ("localhost", "127.0.0.1", "[::1]", "app.localhost"):
            port = srv.url.rsplit(":", 1)[1]
            r = httpx.post(srv.url + "/v1/chat/completions", json=body, headers={"Host": f"{host}:{port}"}, timeout=60)
            assert r.status_code == 200, (host, r.text)
        for host in ("evil.example", "127.0.0.1.nip.io", "localhost.evil.example", "10.0.0.1"):
            assert_error(httpx.get(srv.url + "/v1/models", headers={"Host": host}), 403, code="host_not_allowed")
    with BackgroundServer(create_app(embedded, page=False, allowed_hosts=["llm.lan"])) as srv:
        assert httpx.get(srv.url + "/v1/models", headers={"Host": "llm.lan:8000"}).status_code == 200
        assert httpx.get(srv.url + "/v1/models", headers={"Host": "evil.example"}).status_code == 403
    with BackgroundServer(create_app(embedded, page=False, allowed_hosts=None)) as srv:
        assert httpx.get(srv.url + "/v1/models", headers={"Host": "anything.example"}).status_code == 200
