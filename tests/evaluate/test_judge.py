"""Judging through the CLI against a scripted judge on a real loopback OpenAI server (see judge_server.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from camelid.cli import main
from camelid.core.io import read_jsonl

from .conftest import write_answers
from .judge_server import JudgeServer


@pytest.fixture
def judge_server():
    servers = []

    def start(policy: str, delay: float = 0.0) -> JudgeServer:
        servers.append(JudgeServer(policy, delay))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _judge_cli(server, *args) -> int:
    return main(["eval", "judge", "--judge", "openai:scripted", "--base-url", server.url, "--api-key", "x", *args])


def test_pairwise_output_shows_both_orders_the_swap_and_the_tie_rule(judge_server, vicuna10, two_models, tmp_path,
                                                                     capsys):
    terse, verbose = two_models
    srv = judge_server("first")  # always prefers whatever is shown first: pure position bias
    out = tmp_path / "pair.jsonl"
    assert _judge_cli(srv, "--mode", "pairwise", "-q", str(vicuna10), "--answers", str(terse), str(verbose),
                      "-o", str(out), "--summary", str(tmp_path / "s.json")) == 0
    rows = [r for _, r in read_jsonl(out)]
    assert len(rows) == 10 and len(srv.requests) == 20
    for r in rows:
        assert (r["model_1"], r["model_2"]) == ("terse", "verbose")
        assert (r["g1"]["A"], r["g1"]["B"], r["g2"]["A"], r["g2"]["B"]) == ("terse", "verbose", "verbose", "terse")
        assert r["g1"]["verdict"] == r["g2"]["verdict"] == "A"  # the raw verdicts...
        assert (r["g1_winner"], r["g2_winner"], r["winner"]) == ("model_1", "model_2", "tie")  # ...swapped: a tie
        assert r["swap_agree"] is False and r["g1"]["judgment"].endswith("[[A]]")
        g1, g2 = r["user_prompts"]
        assert g1.index("Short answer") < g1.index("Assistant B's answer (begin)")  # game 1: terse shown as A
        assert g2.index("Short answer") > g2.index("Assistant B's answer (begin)")  # game 2: terse shown as B
    summary = json.loads((tmp_path / "s.json").read_text())["pairwise"][0]
    assert (summary["win"], summary["tie"], summary["loss"], summary["swap_disagreements"]) == (0, 10, 0, 10)
    assert summary["win_rate"] == 0.5
    err = capsys.readouterr().err
    assert "disagreement = tie" in err and "0/10/0" in err

    # a rerun judges nothing: every pair is cached by its hash
    n = len(srv.requests)
    assert _judge_cli(srv, "--mode", "pairwise", "-q", str(vicuna10), "--answers", str(terse), str(verbose),
                      "-o", str(out)) == 0
    assert len(srv.requests) == n and "0 judged, 10 cached" in capsys.readouterr().err


def test_consistent_verdicts_give_wins_with_bootstrap_intervals(judge_server, vicuna10, two_models, tmp_path):
    terse, verbose = two_models
    srv = judge_server("longer")
    out = tmp_path / "pair.jsonl"
    assert _judge_cli(srv, "--mode", "pairwise", "-q", str(vicuna10), "--answers", str(terse), "--answers",
                      str(verbose), "-o", str(out), "--summary", str(tmp_path / "s.json"), "--seed", "7") == 0
    s = json.loads((tmp_path / "s.json").read_text())["pairwise"][0]
    assert (s["win"], s["tie"], s["loss"]) == (1, 0, 9)  # terse is longer only on question 3
    assert s["win_rate"] == 0.1 and 0.0 <= s["win_rate_ci"][0] <= 0.1 <= s["win_rate_ci"][1] <= 0.4
    rows = [r for _, r in read_jsonl(out)]
    assert all(r["swap_agree"] for r in rows) and {r["winner_model"] for r in rows} == {"terse", "verbose"}


def test_alpaca_eval_win_rate_against_the_reference_outputs_raw_and_length_controlled(judge_server, shared_data,
                                                                                        tmp_path):
    data = json.loads((shared_data / "alpaca_eval" / "example_outputs.json").read_text())[:20]
    qfile = tmp_path / "alpaca_eval.json"
    qfile.write_text(json.dumps(data))
    # the candidate is 195 characters longer than the reference on 14 instructions (4 of them marked WORST: they
    # lose anyway) and 195 shorter on 6 (2 marked BEST: they win anyway); the judge otherwise prefers length
    ans = {}
    for i, r in enumerate(data):
        ref = r["output"]
        if i < 14:
            ans[i] = [("WORST " if i in (1, 5, 9, 12) else "") + ref + " More detail." * 15]
        else:
            ans[i] = [("BEST " if i in (15, 18) else "") + ref[: max(10, len(ref) - 195)]]
    cand = write_answers(tmp_path / "cand.jsonl", "cand", ans)
    srv = judge_server("longer")
    assert _judge_cli(srv, "--mode", "pairwise", "-q", str(qfile), "--answers", str(cand), "-o",
                      str(tmp_path / "j.jsonl"), "--summary", str(tmp_path / "s.json")) == 0
    s = json.loads((tmp_path / "s.json").read_text())["pairwise"][0]
    assert (s["model_1"], s["model_2"]) == ("cand", "example")  # AlpacaEval's `output` is the baseline
    assert (s["win"], s["tie"], s["loss"]) == (12, 0, 8) and s["win_rate"] == 0.6
    # most of the candidate's wins are bought with length: at equal length it is about even with the reference
    assert s["lc_win_rate"] < s["win_rate"] and 0.4 < s["lc_win_rate"] < 0.6
    assert s["lc_win_rate_ci"][0] <= s["lc_win_rate_ci"][1]


def test_single_grading_keeps_unparseable_replies_with_a_null_score(judge_server, vicuna10, two_models, tmp_path,
                                                                    capsys):
    terse, _ = two_models
    rows = [json.loads(x) for x in terse.read_text().splitlines()]
    rows[4]["choices"][0]["turns"] = ["NOVERDICT please"]
    terse.write_text("".join(json.dumps(r) + "\n" for r in rows))
    srv = judge_server("longer")
    out = tmp_path / "single.jsonl"
    assert _judge_cli(srv, "--mode", "single", "-q", str(vicuna10), "--answers", str(terse), "-o", str(out),
                      "--summary", str(tmp_path / "s.json")) == 0
    got = [r for _, r in read_jsonl(out)]
    assert len(got) == 10 and sum(r["score"] is None for r in got) == 1
    bad = next(r for r in got if r["score"] is None)
    assert bad["question_id"] == 5 and bad["judgment"] == "I cannot decide on this one."
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["stats"]["unparsed"] == 1 and s["single"][0]["unparsed"] == 1 and s["single"][0]["scored"] == 9
    assert "1 without a parseable verdict" in capsys.readouterr().err


def test_math_questions_are_graded_against_the_reference_on_both_turns(judge_server, shared_data, tmp_path):
    mt = [json.loads(x) for x in (shared_data / "fastchat" / "mt_bench_question.jsonl").read_text().splitlines()]
    picked = [q for q in mt if q["category"] == "math"][:1] + [q for q in mt if q["category"] == "writing"][:1]
    qfile = tmp_path / "mt.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in picked))
    ans = write_answers(tmp_path / "a.jsonl", "m", {q["question_id"]: ["first turn", "second turn"] for q in picked})
    srv = judge_server("longer")
    out = tmp_path / "j.jsonl"
    assert _judge_cli(srv, "-q", str(qfile), "--answers", str(ans), "-o", str(out)) == 0
    got = {(r["category"], r["turn"]): r for _, r in read_jsonl(out)}
    assert {k: r["prompt"] for k, r in got.items()} == {
        ("math", 1): "single-ref", ("math", 2): "single-ref-multi", ("writing", 1): "single",
        ("writing", 2): "single-multi"}
    math2 = got[("math", 2)]["user_prompts"][0]
    assert picked[0]["reference"][1] in math2 and picked[0]["turns"][1] in math2 and "second turn" in math2


def test_killed_judge_run_loses_nothing_and_the_rerun_finishes(judge_server, vicuna10, two_models, tmp_path):
    terse, verbose = two_models
    srv = judge_server("longer", delay=0.4)
    out = tmp_path / "pair.jsonl"
    cmd = [sys.executable, "-m", "camelid", "eval", "judge", "--judge", "openai:scripted", "--base-url", srv.url,
           "--api-key", "x", "--mode", "pairwise", "-q", str(vicuna10), "--answers", str(terse), str(verbose),
           "-o", str(out), "--concurrency", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = [r["key"] for _, r in read_jsonl(out)]
    assert 3 <= len(first) < 10
    srv.delay = 0.0
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    keys = [r["key"] for _, r in read_jsonl(out)]
    assert len(keys) == len(set(keys)) == 10 and keys[: len(first)] == first
    assert f"{10 - len(first)} judged, {len(first)} cached" in r.stderr


def test_mt_bench_pairs_are_judged_per_turn_with_the_multi_turn_prompts(judge_server, shared_data, tmp_path):
    mt = [json.loads(x) for x in (shared_data / "fastchat" / "mt_bench_question.jsonl").read_text().splitlines()]
    picked = [q for q in mt if q["category"] == "math"][:1] + [q for q in mt if q["category"] == "writing"][:1]
    qfile = tmp_path / "mt.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in picked))
    ids = [q["question_id"] for q in picked]
    a = write_answers(tmp_path / "a.jsonl", "a", {i: ["a short first", "a much longer second answer"] for i in ids})
    b = write_answers(tmp_path / "b.jsonl", "b", {i: ["a longer first answer", "short"] for i in ids})
    srv = judge_server("longer")
    out = tmp_path / "j.jsonl"
    assert _judge_cli(srv, "--mode", "pairwise", "-q", str(qfile), "--answers", str(a), str(b), "-o", str(out)) == 0
    got = {(r["category"], r["turn"]): r for _, r in read_jsonl(out)}
    assert {k: r["prompt"] for k, r in got.items()} == {
        ("math", 1): "pair-ref", ("math", 2): "pair-ref-multi", ("writing", 1): "pair", ("writing", 2): "pair-multi"}
    assert {k: r["winner_model"] for k, r in got.items()} == {
        ("math", 1): "b", ("math", 2): "a", ("writing", 1): "b", ("writing", 2): "a"}
    g2 = got[("writing", 2)]["user_prompts"][1]  # game 2 shows b's conversation as A
    assert g2.index("a longer first answer") < g2.index("a short first")
