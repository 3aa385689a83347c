"""Batched decoding: llama.cpp's continuous batcher and the transformers batcher against one-at-a-time decoding."""

from __future__ import annotations

import random
import time
from dataclasses import replace

import pytest

from camelid.models import Sampling
from camelid.models.batching import TextOut

TOPICS = ["the sea", "a cat", "winter", "coffee", "a robot", "the moon", "trains", "bread"]


def convs(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Write two sentences about {TOPICS[i % len(TOPICS)]}."}] for i in range(n)]


def prefix_agreement(model, a: str, b: str) -> tuple[int, int]:
    """(tokens equal before the first difference, tokens of the longer answer): once one token differs the rest
    of a greedy answer follows another path, so agreement is counted up to the first difference."""
    ta, tb = model.tokenize(a), model.tokenize(b)
    same = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
    return same, max(len(ta), len(tb), 1)


def test_text_out_holds_back_a_possible_stop_and_cuts_at_it():
    t = TextOut(["</s>", "\n\n"])
    assert t.feed_text("Hello <") == "Hello "
    assert t.feed_text("/") == ""
    assert t.feed_text("p> ok\n") == "</p> ok"
    assert t.feed_text("\nmore") == "" and t.stopped and t.text == "Hello </p> ok"
    t = TextOut([])
    assert t.feed("é".encode()[:1]) == "" and t.feed("é".encode()[1:]) == "é"


# ------------------------------------------------------------------------------------------------ llama.cpp


def chat_sequential(model, messages, sampling):
    return "".join(c.text for c in model.stream_sequential(model.chat_prompt(messages), model.chat_sampling(sampling)))


def test_a_request_alone_in_the_batcher_gives_create_completions_greedy_answer(embedded):
    greedy = Sampling(temperature=0, max_tokens=40)
    for messages in convs(3):
        assert embedded.chat(messages, greedy).text == chat_sequential(embedded, messages, greedy)


def test_concurrent_greedy_answers_share_decode_steps_and_mostly_agree_with_one_at_a_time(embedded):
    greedy = Sampling(temperature=0, max_tokens=48)
    cs = convs(8)
    before = embedded.batcher.stats()
    got = dict(embedded.map(lambda m: embedded.chat(m, greedy), cs, concurrency=8))
    after = embedded.batcher.stats()
    tokens = sum(r.completion_tokens for r in got.values())
    # one decode step served several sequences: far fewer steps than tokens generated
    assert after["max_running"] >= 4 and after["steps"] - before["steps"] < tokens / 2
    ref = [chat_sequential(embedded, m, greedy) for m in cs]
    same = total = 0
    for i, r in got.items():
        assert r.finish_reason in ("stop", "length") and r.text
        s, t = prefix_agreement(embedded, r.text, ref[i])
        same, total = same + s, total + t
    # llama.cpp's batched matmuls round differently from single-row ones: measured 89-100% here; a position or
    # sequence mix-up would give ~0% (every answer would go wrong from its first tokens)
    assert same / total >= 0.6, (same, total)


def test_a_request_joins_while_another_is_generating_and_finishes_first(embedded):
    long = embedded.stream_chat([{"role": "user", "content": "Count from 1 to 200, one number per line."}],
                                Sampling(temperature=0, max_tokens=300))
    first = next(long)  # the long request is generating now
    assert first.text
    t0 = time.perf_counter()
    short = embedded.chat([{"role": "user", "content": "Say hi."}], Sampling(temperature=0, max_tokens=4))
    joined = time.perf_counter() - t0
    assert short.completion_tokens >= 1
    assert embedded.batcher.stats()["running"] == 1  # the long one is still running: the short one joined it
    rest = list(long)
    assert rest[-1].finish_reason in ("stop", "length") and rest[-1].completion_tokens > 20
    assert joined < 60


def test_closing_a_stream_frees_its_sequence_at_the_next_step(embedded):
    s = embedded.stream_chat([{"role": "user", "content": "Count from 1 to 500."}],
                             Sampling(temperature=0, max_tokens=600))
    next(s)
    s.close()
    deadline = time.monotonic() + 10
    while embedded.batcher.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert embedded.batcher.stats() | {"steps": 0, "max_running": 0, "tokens_decoded": 0} == {
        "running": 0, "waiting": 0, "steps": 0, "max_running": 0, "tokens_decoded": 0}


def test_seeded_sampling_in_the_batcher_repeats_and_follows_create_completion(embedded):
    s = Sampling(temperature=0.9, max_tokens=24, seed=1234)
    a = embedded.complete("Once upon a time", s).text
    assert a == embedded.complete("Once upon a time", s).text
    assert a == "".join(c.text for c in embedded.stream_sequential("Once upon a time", s))


def test_more_requests_than_slots_wait_and_all_finish(tmp_path):
    from camelid.models import embedded_gguf
    from camelid.models.llamacpp import LlamaCppModel

    m = LlamaCppModel(embedded_gguf(), n_ctx=512, n_seq=2, kv_tokens=512)
    try:
        out = dict(m.map(lambda i: m.complete(f"{i} + {i} =", Sampling(temperature=0, max_tokens=5)), range(6),
                         concurrency=6))
        assert sorted(out) == list(range(6)) and all(not isinstance(r, BaseException) for r in out.values())
        assert m.batcher.stats()["max_running"] == 2
    finally:
        m.close()


def answers_with_jitter(model, items, sampling, seed: int) -> list[str]:
    """map's answers, each call first sleeping a random while (the threads reach the model in a shuffled order) and
    the odd ones asking a second question after the first (two requests in a row from one call)."""
    rng = random.Random(seed)
    delays = [rng.uniform(0, 0.3) for _ in items]

    def work(i: int) -> str:
        time.sleep(delays[i])
        first = model.chat(items[i], replace(sampling, seed=100 + i)).text
        if i % 2:
            return first + "|" + model.chat(items[(i + 1) % len(items)], replace(sampling, seed=200 + i)).text
        return first

    got = dict(model.map(work, range(len(items)), concurrency=len(items)))
    return [got[i] for i in range(len(items))]


def test_maps_batches_are_a_function_of_its_items_not_of_thread_timing(embedded):
    """Model.map runs its calls in lockstep waves (models/lockstep.py): whatever order the threads reach the model
    in, the same requests decode together in the same order, so sampled and greedy answers repeat exactly."""
    cs = convs(6)
    for sampling in (Sampling(temperature=0.9, max_tokens=24), Sampling(temperature=0, max_tokens=24)):
        before = embedded.batcher.stats()
        a = answers_with_jitter(embedded, cs, sampling, seed=1)
        assert embedded.batcher.stats()["max_running"] >= 3 and embedded.batcher.stats()["steps"] > before["steps"]
        b = answers_with_jitter(embedded, cs, sampling, seed=2)
        assert a == b and all(a)


def test_a_consumer_that_stops_reading_inside_a_wave_changes_nobody_elses_answer(embedded):
    cs = convs(4)
    s = Sampling(temperature=0.9, max_tokens=24)

    def work(i: int, abandon: bool) -> str:
        stream = embedded.stream_chat(cs[i], replace(s, seed=i))
        if abandon and i == 0:
            next(stream)
            stream.close()  # the group still decodes it to the end, so the others' batches do not change
            return ""
        return "".join(c.text for c in stream)

    full = dict(embedded.map(lambda i: work(i, False), range(4), concurrency=4))
    cut = dict(embedded.map(lambda i: work(i, True), range(4), concurrency=4))
    assert [cut[i] for i in (1, 2, 3)] == [full[i] for i in (1, 2, 3)]


# ------------------------------------------------------------------------------------------------ transformers


@pytest.fixture(scope="module")
def hf():
    pytest.importorskip("torch")
    from camelid.models.hf import HFModel

    m = HFModel("embedded")
    yield m
    m.close()


@pytest.mark.slow
def test_transformers_batched_greedy_equals_generate_one_prompt_at_a_time(hf):
    from camelid.core.tokenize import encode

    greedy = Sampling(temperature=0, max_tokens=24)
    cs = convs(3) + [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "한국어로 인사해 주세요."}]]
    got = dict(hf.map(lambda m: hf.chat(m, greedy), cs, concurrency=len(cs)))
    assert hf.batcher.max_rows >= 3  # they were decoded together
    for i, m in enumerate(cs):
        ids, _ = encode(hf.tokenizer, hf.template, m, add_generation_prompt=True)
        chunks = list(hf._generate(ids, hf.chat_sampling(greedy)))
        assert got[i].text == "".join(c.text for c in chunks), i
        assert got[i].finish_reason == chunks[-1].finish_reason


@pytest.mark.slow
def test_transformers_seeded_sampling_in_a_batch_draws_as_it_would_alone(hf):
    s = Sampling(temperature=0.8, top_p=0.95, max_tokens=16, seed=7)
    prompts = ["Once upon a time", "The weather today"]
    together = dict(hf.map(lambda p: hf.complete(p, s), prompts, concurrency=2))
    for i, p in enumerate(prompts):
        assert together[i].text == hf.complete(p, s).text
