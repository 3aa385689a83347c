"""Backends against real components: llama.cpp in-process, llama.cpp's OpenAI server, a fault-injecting server."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from camelid.cli import main
from camelid.models import ContextLengthError, ModelError, Sampling, embedded_gguf, load_model, parse_spec
from camelid.models.remote import RemoteModel

from .servers import FaultServer, LlamaCppServer

GREEDY = Sampling(temperature=0.0, max_tokens=48, seed=0)
HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]


def test_model_specs_parse_into_kinds_and_reject_nonsense(tmp_path, monkeypatch):
    assert parse_spec("embedded").kind == "embedded"
    assert parse_spec("gguf:/x/m.gguf").target == "/x/m.gguf"
    assert parse_spec("hf:runs/a").kind == "hf"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://a/v1,http://b/v1")
    assert parse_spec("openai:gpt").base_urls == ["http://a/v1", "http://b/v1"]
    assert parse_spec("openai:gpt", base_urls=["http://c/v1"]).base_urls == ["http://c/v1"]
    assert parse_spec(str(tmp_path)).kind == "hf"
    for bad in ("gguf:", "banana", "openai:"):
        with pytest.raises(ModelError):
            parse_spec(bad)


def test_embedded_model_is_found_inside_its_package_without_download():
    path = embedded_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_embedded_chat_uses_the_gguf_chat_template_and_stops_by_itself(embedded):
    assert embedded.template.name == "tokenizer" and embedded.eos_token == "<|im_end|>"
    prompt = embedded.chat_prompt(HELLO)
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nSay hello" in prompt
    out = embedded.chat(HELLO, Sampling(temperature=0.0, max_tokens=200))
    assert out.finish_reason == "stop" and out.text.strip()
    assert out.prompt_tokens == embedded.count_tokens(prompt) and 0 < out.completion_tokens < 200


def test_streamed_chunks_join_to_the_same_text_as_one_completion(embedded):
    whole = embedded.complete("The three primary colors are", GREEDY)
    chunks = list(embedded.stream("The three primary colors are", GREEDY))
    assert "".join(c.text for c in chunks) == whole.text
    assert chunks[-1].finish_reason == whole.finish_reason and chunks[-1].completion_tokens == whole.completion_tokens


def test_max_tokens_ends_with_finish_reason_length_and_counts_tokens(embedded):
    out = embedded.complete("Count from one to one hundred: one, two,", Sampling(temperature=0.0, max_tokens=7))
    assert out.finish_reason == "length" and out.completion_tokens == 7


def test_stop_strings_cut_the_answer(embedded):
    out = embedded.complete("List: 1. apples\n2. pears\n3.", Sampling(temperature=0.0, max_tokens=40, stop=["\n"]))
    assert "\n" not in out.text and out.finish_reason == "stop"


def test_a_prompt_longer_than_the_context_is_a_clear_error(embedded):
    with pytest.raises(ContextLengthError, match="context holds 2048"):
        embedded.complete("word " * 3000, GREEDY)


def test_same_seed_gives_the_same_sampled_answer(embedded):
    s = Sampling(temperature=0.9, max_tokens=24, seed=1234)
    assert embedded.complete("Once upon a time", s).text == embedded.complete("Once upon a time", s).text


def test_map_yields_every_result_with_its_index(embedded):
    prompts = ["1 + 1 =", "The sky is", "Water boils at"]
    got = dict(embedded.map(lambda p: embedded.complete(p, Sampling(temperature=0, max_tokens=4)), prompts))
    assert sorted(got) == [0, 1, 2] and all(r.text for r in got.values())


@pytest.fixture(scope="module")
def llama_server():
    server = LlamaCppServer(str(embedded_gguf()))
    yield server
    server.close()


def test_openai_spec_talks_to_a_real_llama_cpp_server(llama_server, embedded):
    remote = load_model("openai:smollm2", base_urls=[llama_server.url])
    out = remote.chat(HELLO, Sampling(temperature=0.0, max_tokens=40))
    assert out.text.strip() and out.finish_reason in ("stop", "length")
    assert out.prompt_tokens > 0 and out.completion_tokens > 0
    # the server batches and caches prompts differently, so greedy text may differ by a token: compare shapes
    streamed = list(remote.stream_chat(HELLO, Sampling(temperature=0.0, max_tokens=40)))
    assert len(streamed) > 3 and "".join(c.text for c in streamed).strip()
    assert streamed[-1].finish_reason in ("stop", "length") and streamed[-1].completion_tokens > 0
    text = remote.complete("The capital of France is", Sampling(temperature=0.0, max_tokens=8))
    assert "Paris" in text.text and text.finish_reason == "length" and text.completion_tokens == 8


def test_ask_command_answers_through_the_openai_path(llama_server, capsys):
    code = main(["ask", "--model", "openai:smollm2", "--base-url", llama_server.url, "--json",
                 "--temperature", "0", "--max-tokens", "16", "Name a fruit."])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["backend"] == "RemoteModel" and out["text"] and out["completion_tokens"] > 0


def test_ask_command_prints_an_embedded_answer_on_stdout():
    proc = subprocess.run([sys.executable, "-m", "camelid", "ask", "--temperature", "0", "--max-tokens", "60",
                           "Give three tips for staying healthy."], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) > 5


# ------------------------------------------------------------------------------------------ faults


def fast_remote(*urls: str, retries: int = 4, timeout: float = 5.0) -> RemoteModel:
    return RemoteModel("m", list(urls), timeout=timeout, max_retries=retries, backoff=0.05, max_backoff=1.0)


def test_rate_limits_and_server_errors_are_retried_until_an_answer():
    server = FaultServer([("status", 429, {"retry-after": "0.3"}), ("status", 500), ("status", 503), ("ok",)])
    try:
        model = fast_remote(server.url)
        out = model.chat(HELLO)
        assert out.text == "fine" and len(server.hits) == 4 and model.retries == 3
        assert server.hits[1] - server.hits[0] >= 0.28  # Retry-After respected
    finally:
        server.close()


def test_backoff_grows_exponentially_with_jitter():
    server = FaultServer([("status", 500)] * 4 + [("ok",)])
    try:
        fast_remote(server.url, retries=4).chat(HELLO)
        gaps = [b - a for a, b in zip(server.hits, server.hits[1:])]
        assert len(gaps) == 4 and gaps[-1] > gaps[0]
        assert all(0.02 <= g <= 1.6 for g in gaps)
    finally:
        server.close()


def test_timeouts_and_garbage_bodies_are_retried():
    server = FaultServer([("sleep", 2.0), ("garbage",), ("ok",)])
    try:
        out = fast_remote(server.url, timeout=0.5).chat(HELLO)
        assert out.text == "fine" and len(server.hits) == 3
    finally:
        server.close()


def test_client_errors_are_not_retried():
    server = FaultServer([("status", 401)])
    try:
        with pytest.raises(ModelError, match="HTTP 401: injected 401"):
            fast_remote(server.url).chat(HELLO)
        assert len(server.hits) == 1
    finally:
        server.close()


def test_the_last_failure_is_reported_clearly_after_the_final_try():
    server = FaultServer(default=("status", 502))
    try:
        with pytest.raises(ModelError, match=r"gave up after 3 tries; last error: HTTP 502"):
            fast_remote(server.url, retries=2).chat(HELLO)
        assert len(server.hits) == 3
    finally:
        server.close()


def test_several_base_urls_share_the_load_round_robin():
    a, b = FaultServer(), FaultServer()
    try:
        model = fast_remote(a.url, b.url)
        results = list(model.map(lambda _: model.chat(HELLO).text, range(10), concurrency=4))
        assert all(r == "fine" for _, r in results)
        assert len(a.hits) == 5 and len(b.hits) == 5
    finally:
        a.close()
        b.close()


def test_a_dead_server_is_skipped_by_retrying_on_the_next_url():
    live = FaultServer()
    try:
        model = fast_remote("http://127.0.0.1:9/v1", live.url)  # port 9: nothing listens
        assert all(model.chat(HELLO).text == "fine" for _ in range(4))
    finally:
        live.close()


def test_finished_results_survive_a_failing_request_in_a_batch():
    server = FaultServer(default=("ok",))
    try:
        model = fast_remote(server.url, retries=0)

        def work(i):
            if i == 2:
                raise ModelError("request 2 failed")
            return model.chat(HELLO).text

        results = dict(model.map(work, range(5), concurrency=2))
        assert isinstance(results[2], ModelError)
        assert [results[i] for i in (0, 1, 3, 4)] == ["fine"] * 4
    finally:
        server.close()


def test_ask_against_a_failing_server_exits_1_with_one_line_and_no_traceback():
    server = FaultServer(default=("status", 500))
    try:
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "camelid", "ask", "--model", "openai:m", "--base-url", server.url,
                               "--retries", "1", "hi"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and time.time() - t0 < 30
        assert "Traceback" not in proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "gave up after 2 tries" in lines[0] and "HTTP 500" in lines[0]
    finally:
        server.close()


def test_the_reply_types_are_built_before_worker_threads_parse_replies():
    # in a fresh process: the openai client defers building its pydantic classes to first use, which races when
    # several request threads parse their first replies at once (openai-python #3079)
    code = ("from openai.types.chat import ChatCompletion, ChatCompletionChunk\n"
            "from openai.types import Completion\n"
            "assert not ChatCompletion.__pydantic_complete__\n"
            "from camelid.models.remote import RemoteModel, build_response_types\n"
            "RemoteModel('x', ['http://127.0.0.1:9/v1'])\n"
            "built = build_response_types()\n"
            "assert {Completion, ChatCompletion, ChatCompletionChunk} <= set(built)\n"
            "assert all(c.__pydantic_complete__ for c in built), [c for c in built if not c.__pydantic_complete__]\n"
            "print(len(built))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) > 20
