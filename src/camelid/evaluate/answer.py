"""`camelid eval answer`: a model answers an eval set, into FastChat's answer JSONL (cached and resumable).

Rows: `{question_id, answer_id, model_id, choices: [{index, turns, finish_reason, usage}], tstamp, usage,
sampling}`. Multi-turn questions are asked turn by turn with the model's own earlier answers in context. Each
finished question is appended at once, so a killed run keeps what it finished and a rerun skips it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from camelid.core.io import CamelidError, JsonlAppender, output_lock, repair_jsonl_tail, sha256_json
from camelid.evaluate.questions import Question, load_answers
from camelid.models.base import Model, Sampling

# FastChat's MT-bench sampling temperatures per category (gen_model_answer.py); 0.7 for anything else
CATEGORY_TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                        "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
DEFAULT_TEMPERATURE = 0.7


def category_temperature(category: str) -> float:
    return CATEGORY_TEMPERATURE.get(category.lower(), DEFAULT_TEMPERATURE)


@dataclass
class AnswerStats:
    answered: int = 0
    skipped: int = 0  # already in the output file
    failed: list[tuple[str, str]] = field(default_factory=list)  # (question_id, error); retried by a rerun
    completion_tokens: int = 0
    seconds: float = 0.0


def answer_one(model: Model, q: Question, sampling: Sampling, system: str | None = None) -> dict:
    """Ask every turn of one question, each with the model's earlier answers in context."""
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    turns, finish, usage = [], [], []
    for t in range(len(q.turns)):
        messages.append(q.message(t))
        c = model.chat(messages, sampling)
        messages.append({"role": "assistant", "content": c.text})
        turns.append(c.text.strip())
        finish.append(c.finish_reason)
        usage.append({"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                      "latency_s": round(c.latency_s, 3)})
    return {"turns": turns, "finish_reason": finish, "usage": usage}


def answer_questions(model: Model, questions: list[Question], out: str | Path, *, model_id: str | None = None,
                     temperature: float | None = None, max_tokens: int = 1024, top_p: float = 1.0, seed: int = 0,
                     system: str | None = None, concurrency: int | None = None,
                     on_done: Callable[[dict], None] | None = None) -> AnswerStats:
    """Answer every question not yet in `out` for this model id; append each finished answer at once.

    `temperature=None` uses MT-bench's per-category temperatures (0.0 for math/coding/reasoning/extraction, 0.1 for
    stem/humanities, 0.7 otherwise)."""
    out = Path(out)
    model_id = model_id or model.name
    with output_lock(out):  # one writer per output: a second is refused before it reads or cuts anything
        done: set[str] = set()
        if out.exists() and out.stat().st_size:
            repair_jsonl_tail(out)  # a torn last line from a killed run must not stop the resume
            done = set(load_answers(out).get(model_id, {}))
        stats = AnswerStats(skipped=sum(str(q.question_id) in done for q in questions))
        todo = [q for q in questions if str(q.question_id) not in done]
        t0 = time.perf_counter()

        def work(q: Question) -> dict:
            temp = category_temperature(q.category) if temperature is None else temperature
            sampling = Sampling(temperature=temp, top_p=top_p, max_tokens=max_tokens, seed=seed)
            res = answer_one(model, q, sampling, system)
            return {"res": res, "sampling": asdict(sampling)}

        with JsonlAppender(out) as app:
            for i, r in model.map(work, todo, concurrency):
                q = todo[i]
                if isinstance(r, BaseException):
                    if not isinstance(r, Exception):
                        raise r
                    stats.failed.append((str(q.question_id), f"{type(r).__name__}: {r}"))
                    continue
                res = r["res"]
                tokens = [u["completion_tokens"] for u in res["usage"]]
                row = {"question_id": q.question_id,
                       "answer_id": sha256_json([model_id, q.question_id, res["turns"]])[:22],
                       "model_id": model_id,
                       "choices": [{"index": 0, **res}],
                       "tstamp": time.time(),
                       "usage": {"prompt_tokens": sum(u["prompt_tokens"] for u in res["usage"]),
                                 "completion_tokens": sum(tokens)},
                       "sampling": r["sampling"], "category": q.category}
                app.write(row)
                stats.answered += 1
                stats.completion_tokens += sum(tokens)
                if on_done:
                    on_done(row)
        stats.seconds = time.perf_counter() - t0
        if todo and stats.failed and not stats.answered:
            first = stats.failed[0]
            raise CamelidError(f"every question failed; first: question {first[0]}: {first[1]}")
        return stats
