"""Checks shared by the serve tests: the OpenAI error shape and SSE bodies."""

from __future__ import annotations

import json

import httpx

MODEL = "SmolLM2-135M-Instruct"


def assert_error(resp: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error shape: {"error": {"message", "type", "param", "code"}}."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def sse_events(resp: httpx.Response) -> list:
    """The `data:` payloads of an SSE response, JSON-decoded; `[DONE]` stays a string."""
    out = []
    for block in resp.text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def forget(model) -> None:
    """Drop llama.cpp's prompt cache so the next prompt is evaluated whole. A prompt that repeats the previous one
    is re-evaluated one token at a time from the cache, which can change greedy output in the last decimals; tests
    that compare two greedy answers to the same prompt start both from the same state."""
    model.llm.reset()


def off_main_thread(fn, *args):
    """Call the model from a worker thread, as the server does: with OpenMP's default spin-waiting, llama.cpp on
    the main thread of a busy machine ran 15-20x slower (unless OMP_WAIT_POLICY=PASSIVE was set before loading)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()
