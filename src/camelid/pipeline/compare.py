"""Honest before/after: the student before and after training, on instructions it never trained on.

Three measures, reported whatever they show: response-token loss on the held-out reference answers (same
template, same tokens as training), the share of answers that stop by themselves within the token budget, and a
pairwise LLM-judge comparison with the position swap. Both sides run on the same backend (transformers) with the
same template and greedy decoding, so the only difference is the training.
"""

from __future__ import annotations

import gc
import math
from pathlib import Path

from camelid.core.cli import console
from camelid.core.io import CamelidError, write_json
from camelid.core.tokenize import IGNORE_INDEX, encode
from camelid.evaluate.answer import answer_questions
from camelid.evaluate.judge import judge_answers, read_judgments
from camelid.evaluate.questions import load_answers, load_questions
from camelid.evaluate.report import build_report
from camelid.evaluate.stats import bootstrap_ci, pairwise_summary, single_summary
from camelid.models import load_model, local_path
from camelid.models.checkpoint import RunInfo
from camelid.models.hf import HFModel
from camelid.pipeline.recipe import Recipe

BEFORE, AFTER = "before", "after"


def response_loss(model, questions) -> tuple[float | None, int]:
    """Mean loss per trained token of the reference answers under `model` (an HFModel), and the token count."""
    rows = response_losses(model, questions)
    count = sum(r[1] for r in rows)
    return (sum(r[0] for r in rows) / count if count else None), count


def response_losses(model, questions) -> list[tuple[float, int, int]]:
    """(summed loss in nats, trained tokens, characters) of each reference answer under `model` (an HFModel).
    Loss per character is comparable between tokenizers; loss per token is not (an extended vocabulary makes
    fewer, harder tokens for the same text)."""
    import torch

    rows = []
    for q in questions:
        if not q.reference_output:
            continue
        msgs = [q.message(0), {"role": "assistant", "content": q.reference_output}]
        ids, labels = encode(model.tokenizer, model.template, msgs)
        ids, labels = ids[: model.context_length], labels[: model.context_length]
        x = torch.tensor([ids], device=model.model.device)
        y = torch.tensor([labels[1:] + [IGNORE_INDEX]], device=model.model.device)
        with torch.no_grad():
            logits = model.model(input_ids=x, use_cache=False).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0], y[0], ignore_index=IGNORE_INDEX, reduction="sum")
        rows.append((float(loss), int((y != IGNORE_INDEX).sum()), len(q.reference_output)))
    return rows


def loss_measures(model, questions, seed: int = 0) -> dict:
    """Held-out response loss per token and per character, each with a bootstrap 95% interval over questions, and
    the tokenizer's tokens per character of the reference answers."""
    rows = response_losses(model, questions)
    if not rows:
        return {"response_loss": None, "response_tokens": 0}

    def ratio(col: int):
        return lambda rs: sum(r[0] for r in rs) / max(sum(r[col] for r in rs), 1)

    chars = sum(r[2] for r in rows)
    tokens = sum(len(model.tokenizer(q.reference_output, add_special_tokens=False).input_ids)
                 for q in questions if q.reference_output)
    return {"response_loss": ratio(1)(rows), "response_loss_ci": list(bootstrap_ci(rows, ratio(1), seed=seed)),
            "response_tokens": sum(r[1] for r in rows), "response_chars": chars,
            "response_loss_per_char": ratio(2)(rows),
            "response_loss_per_char_ci": list(bootstrap_ci(rows, ratio(2), seed=seed)),
            "tokens_per_char": tokens / max(chars, 1), "vocab_size": len(model.tokenizer)}


def before_after(recipe: Recipe, questions_path: Path, train_dir: Path, out: Path, base: str | None = None) -> dict:
    """`base`: the untrained model when it is not the trained run's own base (a staged run's last stage starts
    from the one before it)."""
    ev = recipe.eval
    out.mkdir(parents=True, exist_ok=True)
    questions = load_questions(questions_path)
    run = RunInfo.read(train_dir)
    if run is None:
        raise CamelidError(f"{train_dir}: no camelid.json (the train stage did not finish)")
    base = local_path(base or run.base_model or "embedded")
    answers = out / "answers.jsonl"
    metrics: dict = {"questions": len(questions), "max_tokens": ev.max_tokens, "temperature": ev.temperature,
                     "template": run.template}
    for model_id, load in ((BEFORE, lambda: HFModel(base, template=run.template)),
                           (AFTER, lambda: load_model(f"hf:{train_dir}"))):
        console.print(f"answering {len(questions)} held-out instructions: {model_id} training")
        model = load()
        answer_questions(model, questions, answers, model_id=model_id, temperature=ev.temperature,
                         max_tokens=ev.max_tokens, seed=recipe.seed)
        metrics[model_id] = loss_measures(model, questions, seed=recipe.seed)
        del model
        gc.collect()
    got = load_answers(answers)
    for model_id in (BEFORE, AFTER):
        finishes = [a.finish_reason[0] for a in got[model_id].values() if a.finish_reason]
        words = [len(a.turns[0].split()) for a in got[model_id].values()]
        metrics[model_id]["self_stop_rate"] = sum(f == "stop" for f in finishes) / len(finishes) if finishes else None
        metrics[model_id]["mean_answer_words"] = sum(words) / len(words) if words else None

    console.print(f"judging after vs before with {ev.judge} (both orders)")
    judge = load_model(ev.judge, base_urls=ev.judge_base_url or None)
    judgments = out / "judgments.jsonl"
    judge_answers(judge, questions, {AFTER: got[AFTER], BEFORE: got[BEFORE]}, judgments, mode="pairwise",
                  lang=ev.lang, max_tokens=ev.judge_max_tokens, seed=recipe.seed, baseline=BEFORE)
    if ev.single:
        judge_answers(judge, questions, {AFTER: got[AFTER], BEFORE: got[BEFORE]}, judgments, mode="single",
                      lang=ev.lang, max_tokens=ev.judge_max_tokens, seed=recipe.seed)
    judge.close()
    single, pair = read_judgments([judgments])
    for s in single_summary(single, seed=recipe.seed) if single else []:
        if s["model"] in metrics:
            metrics[s["model"]]["single_score"] = s["mean"]
    summ = [s for s in pairwise_summary(pair, seed=recipe.seed) if s["model_1"] == AFTER] or \
        pairwise_summary(pair, seed=recipe.seed)
    if summ:
        s = summ[0]
        sign = 1 if s["model_1"] == AFTER else -1
        metrics["pairwise"] = {k: s[k] for k in ("win", "tie", "loss", "errors", "swap_disagreements", "n")}
        metrics["pairwise"]["after_win_rate"] = s["win_rate"] if sign == 1 else 1 - s["win_rate"]
        metrics["pairwise"]["after_win_rate_ci"] = s["win_rate_ci"] if sign == 1 else [1 - s["win_rate_ci"][1],
                                                                                         1 - s["win_rate_ci"][0]]
        metrics["pairwise"]["judge"] = ev.judge
    build_report([judgments], out / "report", title="camelid: after vs before training")
    write_json(out / "metrics.json", _finite(metrics))
    return _finite(metrics)


def _finite(obj):
    """NaN is not JSON; write null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
