"""`camelid eval judge`: LLM-as-a-judge, single-answer grading and pairwise comparison (MT-bench's method).

- prompts: camelid's own set (English, Korean, Chinese) or FastChat's MT-bench set byte for byte (`--prompts mt-bench`,
  comparable with published MT-bench numbers); see judge_prompts and prompts/README.md.
- single: a 1-10 score per answer (per turn for multi-turn questions), reference-guided for math, reasoning and
  coding when a reference exists. Replies without a parseable `[[rating]]` are kept with `score: null` and counted.
- pairwise: every pair is judged twice, once in each order (game 1: model_1 is A; game 2: model_2 is A). When the
  two games disagree the pair counts as a tie, which removes the judge's position bias; a game whose verdict cannot
  be parsed makes the pair an `error` (counted, never dropped).
Each judgment is keyed by a hash of (judge, rendered prompts, sampling): appended to the output JSONL as soon as it
finishes, and skipped by a rerun, so a killed run loses nothing that was finished.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from camelid.core.io import (CamelidError, DataError, JsonlAppender, Problem, output_lock, read_jsonl,
                             repair_jsonl_tail, sha256_json)
from camelid.core.records import json_type
from camelid.evaluate.judge_prompts import (check_prompt_set, needs_reference, pair_messages, parse_score,
                                            parse_verdict, single_messages)
from camelid.evaluate.questions import Answer, Question
from camelid.models.base import Model, Sampling

PROMPTS_DEFAULT = "camelid"


def combine(g1_winner: str, g2_winner: str) -> str:
    """The pair's result from both orders: agreement stands, disagreement is a tie, an unparsed game an error."""
    if "error" in (g1_winner, g2_winner):
        return "error"
    return g1_winner if g1_winner == g2_winner else "tie"


# ---------------------------------------------------------------------------------------------- rendering


def _reference(q: Question, ref_answers: dict[str, Answer] | None, prompts: str) -> list[str] | None:
    if not needs_reference(prompts, q.category):
        return None
    if q.reference:
        return q.reference
    a = (ref_answers or {}).get(str(q.question_id))
    return a.turns if a else None


@dataclass
class _Task:
    key: str
    calls: list[list[dict]]  # one message list per judge call (two for a pair: both orders)
    row: dict


@dataclass
class JudgeStats:
    judged: int = 0
    cached: int = 0
    unparsed: int = 0  # rows written with score/verdict null
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, error): not written, a rerun retries
    seconds: float = 0.0


def _lang(q: Question, lang: str, prompts: str) -> str:
    if prompts == "mt-bench":
        return "en"  # FastChat's prompts are English whatever the question's language
    return q.lang if lang == "auto" else lang


def single_tasks(questions: list[Question], answers: dict[str, dict[str, Answer]], judge_id: str, sampling: Sampling,
                 lang: str = "auto", ref_answers: dict[str, Answer] | None = None, prompts: str = PROMPTS_DEFAULT
                 ) -> list[_Task]:
    tasks = []
    for model, q in itertools.product(sorted(answers), questions):
        a = answers[model].get(str(q.question_id))
        if a is None:
            continue
        lg, ref = _lang(q, lang, prompts), _reference(q, ref_answers, prompts)
        for t in range(min(len(q.turns), len(a.turns))):
            name, msgs = single_messages(prompts, q, a.turns, t, lg, ref if ref is not None and len(ref) > t else None)
            key = sha256_json({"judge": judge_id, "messages": msgs, "sampling": sampling.__dict__})[:24]
            tasks.append(_Task(key, [msgs], {
                "question_id": q.question_id, "model": model, "judge": judge_id, "mode": "single",
                "prompts": prompts, "prompt": name, "lang": lg, "turn": t + 1, "category": q.category,
                "answer_chars": len(a.turns[t]),
                "answer_tokens": a.completion_tokens[t] if t < len(a.completion_tokens) else None}))
    return tasks


def pair_tasks(questions: list[Question], answers: dict[str, dict[str, Answer]], judge_id: str, sampling: Sampling,
               lang: str = "auto", ref_answers: dict[str, Answer] | None = None, baseline: str | None = None,
               prompts: str = PROMPTS_DEFAULT) -> list[_Task]:
    models = sorted(answers)
    if baseline is not None:
        if baseline not in answers:
            raise CamelidError(f"--baseline {baseline!r} is not among the answers' models: {', '.join(models)}")
        pairs = [(m, baseline) for m in models if m != baseline]
    else:
        pairs = list(itertools.combinations(models, 2))
    if not pairs:
        raise CamelidError(f"pairwise judging needs two models; the answers hold {models or 'none'}")
    tasks = []
    for (m1, m2), q in itertools.product(pairs, questions):
        a1, a2 = answers[m1].get(str(q.question_id)), answers[m2].get(str(q.question_id))
        if a1 is None or a2 is None:
            continue
        lg, ref = _lang(q, lang, prompts), _reference(q, ref_answers, prompts)
        for t in range(min(len(q.turns), len(a1.turns), len(a2.turns))):
            r = ref if ref is not None and len(ref) > t else None
            calls = []
            for first, second in ((a1, a2), (a2, a1)):  # game 1: model_1 shown as A; game 2: swapped
                name, msgs = pair_messages(prompts, q, first.turns, second.turns, t, lg, r)
                calls.append(msgs)
            key = sha256_json({"judge": judge_id, "messages": calls, "sampling": sampling.__dict__})[:24]
            tasks.append(_Task(key, calls, {
                "question_id": q.question_id, "model_1": m1, "model_2": m2, "judge": judge_id, "mode": "pairwise",
                "prompts": prompts, "prompt": name, "lang": lg, "turn": t + 1, "category": q.category,
                "length_1": len(a1.turns[t]), "length_2": len(a2.turns[t])}))
    return tasks


def _finish_single(row: dict, replies: list) -> dict:
    text = replies[0].text
    return {**row, "score": parse_score(text, row["prompts"]), "judgment": text,
            "judge_finish_reason": replies[0].finish_reason}


def _finish_pair(row: dict, replies: list) -> dict:
    m1, m2 = row["model_1"], row["model_2"]
    games = {}
    for g, (reply, order) in enumerate(zip(replies, ((m1, m2), (m2, m1))), 1):
        verdict = parse_verdict(reply.text, row["prompts"])
        winner_model = {"A": order[0], "B": order[1], "C": "tie"}.get(verdict or "", None)
        winner = {m1: "model_1", m2: "model_2", "tie": "tie"}.get(winner_model or "", "error")
        games[g] = {"A": order[0], "B": order[1], "verdict": verdict, "winner": winner, "judgment": reply.text,
                    "finish_reason": reply.finish_reason}
    result = combine(games[1]["winner"], games[2]["winner"])
    return {**row, "g1": games[1], "g2": games[2], "g1_winner": games[1]["winner"], "g2_winner": games[2]["winner"],
            "winner": result, "winner_model": {"model_1": m1, "model_2": m2}.get(result, result),
            "swap_agree": games[1]["winner"] == games[2]["winner"] and result != "error"}


def prompt_set(row: dict) -> str:
    """The prompt set a judgment row was made with (rows written before sets existed used camelid's)."""
    return row.get("prompts") or PROMPTS_DEFAULT


def run_tasks(judge: Model, tasks: list[_Task], out: str | Path, sampling: Sampling, concurrency: int | None = None,
              on_done: Callable[[dict], None] | None = None) -> JudgeStats:
    """Judge every task whose key is not yet in `out`; append each finished judgment at once."""
    out = Path(out)
    with output_lock(out):  # one writer per output: a second is refused before it reads or cuts anything
        done, sets = set(), set()
        if out.exists():
            repair_jsonl_tail(out)
            for line, r in read_jsonl(out):
                if not isinstance(r, dict):
                    raise DataError(Problem(str(out), line, None, f"expected a judgment object, got {json_type(r)}"))
                done.add(r.get("key"))
                if r.get("mode") in ("single", "pairwise"):
                    sets.add(prompt_set(r))
        wanted = {t.row["prompts"] for t in tasks}
        if sets - wanted:  # a report must never average scores made with two prompt sets
            raise CamelidError(f"{out} holds judgments made with the {', '.join(sorted(sets))} judge prompts; write "
                               f"the {', '.join(sorted(wanted))} ones to another file")
        seen, todo = set(), []
        for t in tasks:
            if t.key not in done and t.key not in seen:
                todo.append(t)
                seen.add(t.key)
        stats = JudgeStats(cached=sum(t.key in done for t in tasks))
        t0 = time.perf_counter()

        def work(task: _Task) -> list:
            return [judge.chat(msgs, sampling) for msgs in task.calls]

        with JsonlAppender(out) as app:
            for i, r in judge.map(work, todo, concurrency):
                task = todo[i]
                if isinstance(r, BaseException):
                    if not isinstance(r, Exception):
                        raise r
                    stats.failed.append((task.key, f"{type(r).__name__}: {r}"))
                    continue
                finish = _finish_single if task.row["mode"] == "single" else _finish_pair
                row = {"key": task.key, **finish(task.row, r),
                       "user_prompts": [c[-1]["content"] for c in task.calls], "tstamp": time.time()}
                unparsed = row.get("score") is None if row["mode"] == "single" else row["winner"] == "error"
                stats.unparsed += unparsed
                stats.judged += 1
                app.write(row)
                if on_done:
                    on_done(row)
        stats.seconds = time.perf_counter() - t0
        if todo and stats.failed and not stats.judged:
            raise CamelidError(f"every judgment failed; first: {stats.failed[0][1]}")
        return stats


def judge_answers(judge: Model, questions: list[Question], answers: dict[str, dict[str, Answer]], out: str | Path,
                  *, mode: Literal["single", "pairwise"] = "single", judge_id: str | None = None, lang: str = "auto",
                  ref_answers: dict[str, Answer] | None = None, baseline: str | None = None, max_tokens: int = 1024,
                  temperature: float = 0.0, seed: int = 0, concurrency: int | None = None,
                  prompts: str = PROMPTS_DEFAULT, on_done: Callable[[dict], None] | None = None) -> JudgeStats:
    """Judge `answers` ({model_id: {question_id: Answer}}) on `questions` into the append-only JSONL `out`, with the
    judge prompt set `prompts` (camelid | mt-bench: see judge_prompts)."""
    check_prompt_set(prompts, lang)
    judge_id = judge_id or judge.name
    sampling = Sampling(temperature=temperature, max_tokens=max_tokens, seed=seed)
    if mode == "single":
        tasks = single_tasks(questions, answers, judge_id, sampling, lang, ref_answers, prompts)
    elif mode == "pairwise":
        tasks = pair_tasks(questions, answers, judge_id, sampling, lang, ref_answers, baseline, prompts)
    else:
        raise CamelidError(f"--mode {mode!r}: expected single or pairwise")
    if not tasks:
        raise CamelidError("nothing to judge: no answer matches a question id of the question file")
    return run_tasks(judge, tasks, out, sampling, concurrency, on_done)


def read_judgments(paths: list[str | Path]) -> tuple[list[dict], list[dict]]:
    """(single rows, pairwise rows) from judgment files; the last row per key wins."""
    rows: dict[str, dict] = {}
    for p in paths:
        for _, r in read_jsonl(p):
            if isinstance(r, dict) and r.get("mode") in ("single", "pairwise"):
                rows[r.get("key") or str(len(rows))] = r
    single = [r for r in rows.values() if r["mode"] == "single"]
    pair = [r for r in rows.values() if r["mode"] == "pairwise"]
    return single, pair
