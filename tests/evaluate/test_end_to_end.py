"""The embedded model as contestant AND judge, end to end (the 135M judge is weak; the machinery is real)."""

import json
import re

import pytest

from camelid.cli import main
from camelid.core.io import read_jsonl
from camelid.evaluate.answer import answer_questions
from camelid.evaluate.judge import judge_answers
from camelid.evaluate.questions import load_answers, load_questions


@pytest.mark.slow
def test_vicuna_bench_slice_is_answered_judged_and_reported_with_the_embedded_model(smol, vicuna10, tmp_path):
    qs = load_questions(vicuna10)
    assert len(qs) == 10
    answer_questions(smol, qs, tmp_path / "greedy.jsonl", model_id="smol-greedy", temperature=0.0, max_tokens=32)
    answer_questions(smol, qs, tmp_path / "sampled.jsonl", model_id="smol-sampled", temperature=1.0, max_tokens=32,
                     seed=1)
    answers = {**load_answers(tmp_path / "greedy.jsonl"), **load_answers(tmp_path / "sampled.jsonl")}
    assert {m: len(a) for m, a in answers.items()} == {"smol-greedy": 10, "smol-sampled": 10}

    single = judge_answers(smol, qs, answers, tmp_path / "single.jsonl", mode="single", max_tokens=48)
    rows = [r for _, r in read_jsonl(tmp_path / "single.jsonl")]
    assert single.judged == len(rows) == 20 and not single.failed
    assert sum(r["score"] is None for r in rows) == single.unparsed  # counted, kept, never dropped
    assert all(r["judgment"] and (r["score"] is None or 1 <= r["score"] <= 10) for r in rows)

    pair = judge_answers(smol, qs, answers, tmp_path / "pair.jsonl", mode="pairwise", max_tokens=48)
    prow = [r for _, r in read_jsonl(tmp_path / "pair.jsonl")]
    assert pair.judged == len(prow) == 10
    for r in prow:
        assert r["g1"]["A"] == r["g2"]["B"] == "smol-greedy" and r["winner"] in ("model_1", "model_2", "tie", "error")

    # judging again costs nothing: every judgment is cached by its hash
    assert judge_answers(smol, qs, answers, tmp_path / "single.jsonl", mode="single", max_tokens=48).cached == 20

    out = tmp_path / "report"
    assert main(["eval", "report", str(tmp_path / "single.jsonl"), str(tmp_path / "pair.jsonl"), "-o", str(out),
                 "--baseline", "smol-greedy"]) == 0
    md = (out / "report.md").read_text()
    assert "## Single-answer grading" in md and "| smol-greedy vs smol-sampled |" in md
    assert "<table>" in (out / "report.html").read_text()
    # a chart is drawn only from parseable verdicts (the 135M judge seldom writes one)
    assert (out / "win_rates.png").is_file() == any(r["winner"] != "error" for r in prow)
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(s["model"] for s in summary["single"]) == ["smol-greedy", "smol-sampled"]
    assert all(s["n"] == 10 and s["n"] == s["scored"] + s["unparsed"] for s in summary["single"])


def test_korean_user_oriented_set_is_answered_and_judged_with_the_korean_prompts(smol, shared_data, tmp_path):
    qs = load_questions(shared_data / "kullm" / "user_oriented_instructions_eval_ko.jsonl", limit=1)
    answer_questions(smol, qs, tmp_path / "ko.jsonl", model_id="smol", max_tokens=16, temperature=0.0)
    answers = load_answers(tmp_path / "ko.jsonl")
    stats = judge_answers(smol, qs, answers, tmp_path / "judge.jsonl", mode="single", max_tokens=16)  # lang: auto
    rows = [r for _, r in read_jsonl(tmp_path / "judge.jsonl")]
    assert stats.judged == len(rows) == 1 and rows[0]["lang"] == "ko" and rows[0]["prompt"] == "single"
    user = rows[0]["user_prompts"][0]
    assert user.startswith("## 질문\n") and qs[0].turns[0] in user and "## 어시스턴트의 답변 (시작)" in user
    assert rows[0]["score"] is not None or stats.unparsed == 1
    # --lang en forces the English prompts on the same Korean question (a separate cache entry)
    judge_answers(smol, qs, answers, tmp_path / "judge.jsonl", mode="single", max_tokens=16, lang="en")
    rows = [r for _, r in read_jsonl(tmp_path / "judge.jsonl")]
    assert [r["lang"] for r in rows] == ["ko", "en"] and rows[1]["user_prompts"][0].startswith("## Question")


@pytest.mark.slow
def test_answer_cli_with_the_embedded_model_on_the_korean_set(shared_data, tmp_path, capsys):
    out = tmp_path / "a.jsonl"
    assert main(["eval", "answer", "--model", "embedded", "-q",
                 str(shared_data / "kullm" / "user_oriented_instructions_eval_ko.jsonl"), "-o", str(out),
                 "--limit", "1", "--max-tokens", "8", "--model-id", "smol"]) == 0
    row = json.loads(out.read_text())
    assert row["question_id"] == "user_oriented_task_0" and row["model_id"] == "smol"
    assert re.search(r"1 answered, 0 already there, 0 failed", capsys.readouterr().err)
