"""`--prompts mt-bench` against FastChat's own judging code (fastchat_judge.py, copied with its origin noted)."""

import hashlib
import json
from importlib import resources

import pytest

from camelid.cli import main
from camelid.core.io import CamelidError, read_jsonl
from camelid.evaluate.judge import judge_answers, pair_tasks, single_tasks
from camelid.evaluate.judge_prompts import parse_score, parse_verdict
from camelid.evaluate.questions import load_answers, load_questions
from camelid.models.base import Sampling

from . import fastchat_judge as fc
from .conftest import write_answers
from .judge_server import JudgeServer

FASTCHAT_SHA256 = "fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6"  # judge_prompts.jsonl @ 0e6d3e4b


def _shipped() -> bytes:
    return resources.files("camelid.evaluate").joinpath("prompts", "mt-bench.jsonl").read_bytes()


def test_the_shipped_mt_bench_prompts_are_fastchats_file_byte_for_byte(shared_data):
    assert hashlib.sha256(_shipped()).hexdigest() == FASTCHAT_SHA256
    assert _shipped() == (shared_data / "fastchat" / "judge_prompts.jsonl").read_bytes()
    notes = resources.files("camelid.evaluate").joinpath("prompts", "README.md").read_text()
    assert "Apache" in notes and "0e6d3e4beaab66f4d3f93db72541a4abab8af28d" in notes
    assert "Apache License" in resources.files("camelid.evaluate").joinpath("prompts", "mt-bench.LICENSE").read_text()


def _fc_answer(a) -> dict:
    return {"choices": [{"turns": a.turns}]}


@pytest.fixture
def mt_bench(shared_data, tmp_path):
    """The 80 MT-bench questions, two models' answers (distinct per model, question and turn) and reference answers
    for every question of FastChat's NEED_REF_CATS (the question's own `reference`, else a reference answer file, as
    FastChat's reference_answer/gpt-4.jsonl)."""
    qfile = shared_data / "fastchat" / "mt_bench_question.jsonl"
    raw = [json.loads(x) for x in qfile.read_text().splitlines()]
    qs = load_questions(qfile)
    a = write_answers(tmp_path / "a.jsonl", "alpha", {q["question_id"]: [f"alpha {q['question_id']} turn {t}\n{{x}}"
                                                                         for t in (1, 2)] for q in raw})
    b = write_answers(tmp_path / "b.jsonl", "beta", {q["question_id"]: [f"beta says [[{t}]] on {q['question_id']}"
                                                                        for t in (1, 2)] for q in raw})
    ref = write_answers(tmp_path / "ref.jsonl", "gpt-4", {q["question_id"]: [f"ref {q['question_id']} {t}"
                                                                             for t in (1, 2)]
                                                          for q in raw if q["category"] in fc.NEED_REF_CATS})
    answers = {**load_answers(a), **load_answers(b)}
    refs = load_answers(ref)["gpt-4"]
    fc_refs = {q["question_id"]: {"choices": [{"turns": q["reference"]}]} if q.get("reference")
               else _fc_answer(refs[str(q["question_id"])]) for q in raw if q["category"] in fc.NEED_REF_CATS}
    return raw, qs, answers, refs, fc_refs


def test_single_grading_prompts_equal_fastchats_on_every_mt_bench_question_and_turn(mt_bench):
    raw, qs, answers, refs, fc_refs = mt_bench
    judges = fc.make_judge_single("gpt-4", fc.load_judge_prompts(str(resources.files("camelid.evaluate").joinpath(
        "prompts", "mt-bench.jsonl"))))
    tasks = single_tasks(qs, answers, "gpt-4", Sampling(), ref_answers=refs, prompts="mt-bench")
    by_id = {q["question_id"]: q for q in raw}
    same, names = 0, set()
    for t in tasks:
        q = by_id[t.row["question_id"]]
        multi = t.row["turn"] == 2
        judge = fc.pick_judge(judges, q, multi)
        ans = _fc_answer(answers[t.row["model"]][str(q["question_id"])])
        _, _, _, messages = fc.run_judge_single(q, ans, judge, fc_refs.get(q["question_id"]), multi_turn=multi)
        assert t.calls == [messages] and t.row["prompt"] == judge.prompt_template["name"]
        same += t.calls == [messages]
        names.add(t.row["prompt"])
    assert same == len(tasks) == 80 * 2 * 2  # 80 questions, 2 turns, 2 models: 320/320 byte-identical
    assert names == {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"}


def test_pairwise_prompts_equal_fastchats_in_both_orders_on_every_mt_bench_question_and_turn(mt_bench):
    raw, qs, answers, refs, fc_refs = mt_bench
    judges = fc.make_judge_pairwise("gpt-4", fc.load_judge_prompts(str(resources.files("camelid.evaluate").joinpath(
        "prompts", "mt-bench.jsonl"))))
    tasks = pair_tasks(qs, answers, "gpt-4", Sampling(), ref_answers=refs, prompts="mt-bench")
    by_id = {q["question_id"]: q for q in raw}
    same, names = 0, set()
    for t in tasks:
        q = by_id[t.row["question_id"]]
        multi = t.row["turn"] == 2
        judge = fc.pick_judge(judges, q, multi)
        a1 = _fc_answer(answers[t.row["model_1"]][str(q["question_id"])])
        a2 = _fc_answer(answers[t.row["model_2"]][str(q["question_id"])])
        ref = fc_refs.get(q["question_id"])
        g1 = fc.run_judge_pair(q, a1, a2, judge, ref, multi_turn=multi)[3]  # play_a_match_pair's two games
        g2 = fc.run_judge_pair(q, a2, a1, judge, ref, multi_turn=multi)[3]
        assert t.calls == [g1, g2] and t.row["prompt"] == judge.prompt_template["name"]
        same += 2 * (t.calls == [g1, g2])
        names.add(t.row["prompt"])
    assert same == 2 * len(tasks) == 80 * 2 * 2  # 160 pairs, two orders each: 320/320 byte-identical
    assert names == {"pair-v2", "pair-math-v1", "pair-v2-multi-turn", "pair-math-v1-multi-turn"}


JUDGE_OUTPUTS = [
    "Rating: [[7]]", "Rating: [[7.]]", "[[8.5]]", "Rating: [[10]]", "The example says [[5]]; my rating: [[3]]",
    "Rating: [6]", "Rating: [[ 9 ]]", "Rating: [[7/10]]", "Rating: [[0]]", "Rating: [[11]]", "Rating: [[-2]]",
    "[[08.5]]", "no rating", "", "[[A]]", "Assistant B is better. [[B]]", "Tie. [[C]]",
    'Output "[[A]]" if A is better, "[[B]]" if B is better. Verdict: [[B]]', "[[B]] ... on reflection [[A]]",
    "[[tie]]", "[[a]]", "[[ A ]]", "[A]", "[[C]] or [[B]]", "final: [[A]]]", "[[AB]]", "평가: [[B]]",
]


@pytest.mark.parametrize("text", JUDGE_OUTPUTS)
def test_verdicts_are_read_as_fastchats_code_reads_them(text):
    prompts = {"output_format": "[[rating]]", "prompt_template": "{question}{answer}", "system_prompt": "s"}
    q, a = {"turns": ["q"]}, {"choices": [{"turns": ["a"]}]}
    rating = fc.run_judge_single(q, a, fc.Judge("gpt-4", prompts), None, judgment=text)[0]
    assert parse_score(text, "mt-bench") == (None if rating == -1 else float(rating))
    pair = {"output_format": "[[A]]", "prompt_template": "{question}{answer_a}{answer_b}", "system_prompt": "s"}
    winner = fc.run_judge_pair(q, a, a, fc.Judge("gpt-4", pair), None, judgment=text)[0]
    assert parse_verdict(text, "mt-bench") == {"A": "A", "B": "B", "tie": "C", "error": None}[winner]


def test_a_rating_fastchat_crashes_on_is_read_as_its_number():
    # ast.literal_eval("08") raises SyntaxError in FastChat's judge thread; camelid reads 8 rather than stop the run
    with pytest.raises(SyntaxError):
        fc.run_judge_single({"turns": ["q"]}, {"choices": [{"turns": ["a"]}]}, fc.Judge("gpt-4", {
            "output_format": "[[rating]]", "prompt_template": "{question}{answer}", "system_prompt": "s"}), None,
            judgment="Rating: [[08]]")
    assert parse_score("Rating: [[08]]", "mt-bench") == 8.0


def test_the_two_sets_read_the_same_reply_differently_where_fastchat_differs():
    text = 'The format is "Rating: [[5]]". My rating: [[3]]'
    assert (parse_score(text, "mt-bench"), parse_score(text, "camelid")) == (5.0, 3.0)  # FastChat takes the first
    text = 'Answer "[[A]]" if A is better or "[[B]]". Verdict: [[B]]'
    assert (parse_verdict(text, "mt-bench"), parse_verdict(text, "camelid")) == ("A", "B")
    assert parse_score("[[7.]]", "camelid") == parse_score("[[7.]]", "mt-bench") == 7.0


@pytest.fixture
def server():
    srv = JudgeServer("longer")
    yield srv
    srv.close()


def _two_mt_questions(shared_data, tmp_path):
    mt = [json.loads(x) for x in (shared_data / "fastchat" / "mt_bench_question.jsonl").read_text().splitlines()]
    picked = [q for q in mt if q["category"] == "math"][:1] + [q for q in mt if q["category"] == "writing"][:1]
    qfile = tmp_path / "mt.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in picked))
    ids = [q["question_id"] for q in picked]
    a = write_answers(tmp_path / "a.jsonl", "a", {i: ["a short first", "a much longer second answer"] for i in ids})
    b = write_answers(tmp_path / "b.jsonl", "b", {i: ["a longer first answer", "short"] for i in ids})
    return picked, qfile, a, b


def test_judge_and_report_with_mt_bench_prompts_send_fastchats_messages_and_say_so(server, shared_data, tmp_path):
    picked, qfile, a, b = _two_mt_questions(shared_data, tmp_path)
    out = tmp_path / "pair.jsonl"
    assert main(["eval", "judge", "--judge", "openai:gpt-4", "--base-url", server.url, "--api-key", "x",
                 "--prompts", "mt-bench", "--mode", "pairwise", "-q", str(qfile), "--answers", str(a), str(b),
                 "-o", str(out), "--summary", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["judge_prompts"] == "mt-bench"
    got = {(r["category"], r["turn"]): r for _, r in read_jsonl(out)}
    assert {k: (r["prompts"], r["prompt"]) for k, r in got.items()} == {
        ("math", 1): ("mt-bench", "pair-math-v1"), ("math", 2): ("mt-bench", "pair-math-v1-multi-turn"),
        ("writing", 1): ("mt-bench", "pair-v2"), ("writing", 2): ("mt-bench", "pair-v2-multi-turn")}
    assert {k: r["winner_model"] for k, r in got.items()} == {
        ("math", 1): "b", ("math", 2): "a", ("writing", 1): "b", ("writing", 2): "a"}
    # what went over HTTP is FastChat's request, byte for byte
    judges = fc.make_judge_pairwise("gpt-4", fc.load_judge_prompts(str(shared_data / "fastchat" /
                                                                        "judge_prompts.jsonl")))
    ans = {m: {x["question_id"]: x for x in map(json.loads, f.read_text().splitlines())} for m, f in (("a", a),
                                                                                                     ("b", b))}
    expected = []
    for q in picked:
        ref = {"choices": [{"turns": q["reference"]}]} if q["category"] in fc.NEED_REF_CATS else None
        for multi in (False, True):
            judge = fc.pick_judge(judges, q, multi)
            a1, a2 = ans["a"][q["question_id"]], ans["b"][q["question_id"]]
            expected += [fc.run_judge_pair(q, a1, a2, judge, ref, multi)[3],
                         fc.run_judge_pair(q, a2, a1, judge, ref, multi)[3]]
    assert sorted(map(json.dumps, server.requests)) == sorted(map(json.dumps, expected))

    report = tmp_path / "report"
    assert main(["eval", "report", str(out), "-o", str(report)]) == 0
    md = (report / "report.md").read_text()
    assert "with mt-bench: FastChat's MT-bench judge prompts" in md and "length_controlled_minimal" in md
    assert json.loads((report / "summary.json").read_text())["judge_prompts"] == {"pairwise": "mt-bench"}


def test_mt_bench_prompts_are_refused_where_fastchat_has_none(server, shared_data, tmp_path, capsys):
    picked, qfile, a, b = _two_mt_questions(shared_data, tmp_path)
    args = ["eval", "judge", "--judge", "openai:gpt-4", "--base-url", server.url, "--api-key", "x", "-q", str(qfile),
            "--answers", str(a), "-o", str(tmp_path / "j.jsonl")]
    assert main([*args, "--prompts", "mt-bench", "--lang", "ko"]) == 1
    assert "English only" in capsys.readouterr().err
    assert main([*args, "--prompts", "fastchat"]) == 1
    assert "expected one of camelid, mt-bench" in capsys.readouterr().err
    three = tmp_path / "three.jsonl"
    three.write_text(json.dumps({"question_id": 1, "category": "writing", "turns": ["one", "two", "three"]}) + "\n")
    ans = load_answers(write_answers(tmp_path / "3.jsonl", "m", {1: ["x", "y", "z"]}))
    with pytest.raises(CamelidError, match="hold two turns"):
        single_tasks(load_questions(three), ans, "j", Sampling(), prompts="mt-bench")
    assert server.requests == []


def test_a_judgment_file_or_a_report_never_mixes_two_prompt_sets(server, shared_data, tmp_path, capsys):
    from camelid.models import load_model

    picked, qfile, a, b = _two_mt_questions(shared_data, tmp_path)
    qs, answers = load_questions(qfile), {**load_answers(a), **load_answers(b)}
    judge = load_model("openai:gpt-4", base_urls=[server.url], api_key="x")
    try:
        judge_answers(judge, qs, answers, tmp_path / "camelid.jsonl", mode="single")
        judge_answers(judge, qs, answers, tmp_path / "mt.jsonl", mode="single", prompts="mt-bench")
        n = len(server.requests)
        with pytest.raises(CamelidError, match="camelid judge prompts; write the mt-bench ones to another file"):
            judge_answers(judge, qs, answers, tmp_path / "camelid.jsonl", mode="single", prompts="mt-bench")
        assert len(server.requests) == n  # refused before any judge call
    finally:
        judge.close()
    assert main(["eval", "report", str(tmp_path / "camelid.jsonl"), str(tmp_path / "mt.jsonl"), "-o",
                 str(tmp_path / "r")]) == 1
    assert "different judge prompt sets (camelid, mt-bench)" in capsys.readouterr().err
    assert main(["eval", "report", str(tmp_path / "camelid.jsonl"), "-o", str(tmp_path / "r")]) == 0
    assert "with camelid: camelid's own judge prompts (not MT-bench's" in (tmp_path / "r" / "report.md").read_text()
