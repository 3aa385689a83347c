import os
import signal
import subprocess
import sys
import time

from camelid.core.io import read_jsonl
from camelid.evaluate.answer import answer_questions, category_temperature
from camelid.evaluate.questions import load_answers, load_questions

from .judge_server import JudgeServer


def test_mt_bench_answers_are_fastchat_shaped_with_the_first_answer_in_context(smol, shared_data, tmp_path):
    mt = load_questions(shared_data / "fastchat" / "mt_bench_question.jsonl")
    qs = [next(q for q in mt if q.category == "math"), next(q for q in mt if q.category == "writing")]
    out = tmp_path / "answers.jsonl"
    stats = answer_questions(smol, qs, out, model_id="smol", max_tokens=8)
    assert (stats.answered, stats.skipped, stats.failed) == (2, 0, [])
    rows = {r["question_id"]: r for _, r in read_jsonl(out)}
    for q in qs:
        r = rows[q.question_id]
        assert set(r) >= {"question_id", "answer_id", "model_id", "choices", "tstamp"} and r["model_id"] == "smol"
        ch = r["choices"][0]
        assert ch["index"] == 0 and len(ch["turns"]) == 2 and all(isinstance(t, str) for t in ch["turns"])
        assert all(f in ("stop", "length") for f in ch["finish_reason"])
        u1, u2 = ch["usage"]
        # turn 2 is asked after turn 1 and the model's own answer to it
        assert u2["prompt_tokens"] >= u1["prompt_tokens"] + u1["completion_tokens"]
        assert r["usage"]["completion_tokens"] == u1["completion_tokens"] + u2["completion_tokens"]
        assert r["sampling"]["temperature"] == category_temperature(q.category)
    assert rows[qs[0].question_id]["sampling"]["temperature"] == 0.0
    assert rows[qs[1].question_id]["sampling"]["temperature"] == 0.7
    again = answer_questions(smol, qs, out, model_id="smol", max_tokens=8)
    assert (again.answered, again.skipped) == (0, 2) and len(out.read_text().splitlines()) == 2


def test_alpaca_and_self_instruct_inputs_reach_the_model(smol, shared_data, tmp_path):
    si = load_questions(shared_data / "self-instruct" / "user_oriented_instructions.jsonl", limit=1)
    txt = tmp_path / "i.txt"
    txt.write_text("Say hello.\n")
    out = tmp_path / "a.jsonl"
    answer_questions(smol, si + load_questions(txt), out, model_id="m", max_tokens=4, temperature=0.0)
    got = load_answers(out)["m"]
    assert set(got) == {"user_oriented_task_0", "1"}
    prompt = smol.chat_prompt([si[0].message(0)])
    assert si[0].input in prompt and si[0].turns[0] in prompt


def test_killed_answer_run_resumes_without_duplicates(vicuna10, tmp_path):
    srv = JudgeServer("longer", delay=0.3)  # any OpenAI-compatible server will do as the contestant
    out = tmp_path / "answers.jsonl"
    cmd = [sys.executable, "-m", "camelid", "eval", "answer", "--model", "openai:contestant", "--base-url", srv.url,
           "--api-key", "x", "-q", str(vicuna10), "-o", str(out), "--concurrency", "2", "--max-tokens", "16"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 3):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        first = [r["question_id"] for _, r in read_jsonl(out)]
        assert 3 <= len(first) < 10
        srv.delay = 0.0
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert f"{10 - len(first)} answered, {len(first)} already there" in r.stderr
        ids = [r["question_id"] for _, r in read_jsonl(out)]
        assert sorted(ids) == list(range(1, 11)) and ids[: len(first)] == first
    finally:
        srv.close()
