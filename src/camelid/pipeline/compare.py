"""Honest before/after: the student before and after training, on instructions it never trained on.

Measures reported whatever they show, each with a 95% bootstrap interval and the change with a paired one:
response-token loss on the held-out reference answers (same template, same tokens as training), ROUGE-L of the
answers against those references, the answers that stop by themselves within the token budget (with counts), the
pass rate of a programmatic check when the recipe has one (a distilled behaviour), and a pairwise LLM-judge
comparison with the position swap unless `eval.judge: none`. Both sides run on the same backend (transformers) with
the same template and greedy decoding, so the only difference is the training.
"""

from __future__ import annotations

import gc
import math
from pathlib import Path

from camelid.core.cli import console
from camelid.core.io import CamelidError, write_json
from camelid.core.tokenize import IGNORE_INDEX, encode
from camelid.data.checks import Check
from camelid.evaluate import signal
from camelid.evaluate.answer import answer_questions
from camelid.evaluate.judge import judge_answers, read_judgments
from camelid.evaluate.questions import load_answers, load_questions
from camelid.evaluate.report import build_report
from camelid.evaluate.stats import pairwise_summary, single_summary
from camelid.models import load_model, local_path
from camelid.models.checkpoint import RunInfo
from camelid.models.hf import HFModel
from camelid.pipeline.recipe import Recipe

BEFORE, AFTER = "before", "after"


def response_losses(model, questions) -> dict[str, tuple[float, int, int]]:
    """Per question id with a reference answer: (summed loss in nats, trained tokens, characters) of the answer under
    `model` (an HFModel). Loss per character is comparable between tokenizers; loss per token is not (an extended
    vocabulary makes fewer, harder tokens for the same text)."""
    import torch

    per: dict[str, tuple[float, int, int]] = {}
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
        per[str(q.question_id)] = (float(loss), int((y != IGNORE_INDEX).sum()), len(q.reference_output))
    return per


def loss_measures(model, questions, per: dict[str, tuple[float, int, int]], seed: int = 0) -> dict:
    """Held-out response loss per token and per character, each with a bootstrap 95% interval over questions, and
    the tokenizer's tokens per character of the reference answers."""
    if not per:
        return {"response_loss": None, "response_tokens": 0}
    loss, toks, chars = ([v[i] for v in per.values()] for i in range(3))
    tokens = sum(len(model.tokenizer(q.reference_output, add_special_tokens=False).input_ids)
                 for q in questions if q.reference_output)
    return {"response_loss": signal.ratio(loss, toks), "response_tokens": sum(toks), "response_chars": sum(chars),
            "response_loss_per_char": signal.ratio(loss, chars),
            "response_loss_per_char_ci": signal.ratio_ci(loss, chars, seed=seed),
            "tokens_per_char": tokens / max(sum(chars), 1), "vocab_size": len(model.tokenizer)}


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
    losses: dict[str, dict[str, tuple[float, int, int]]] = {}
    metrics: dict = {"questions": len(questions), "max_tokens": ev.max_tokens, "temperature": ev.temperature,
                     "template": run.template}
    for model_id, load in ((BEFORE, lambda: HFModel(base, template=run.template)),
                           (AFTER, lambda: load_model(f"hf:{train_dir}"))):
        console.print(f"answering {len(questions)} held-out instructions: {model_id} training")
        model = load()
        answer_questions(model, questions, answers, model_id=model_id, temperature=ev.temperature,
                         max_tokens=ev.max_tokens, seed=recipe.seed)
        losses[model_id] = response_losses(model, questions)
        metrics[model_id] = loss_measures(model, questions, losses[model_id], seed=recipe.seed)
        model.close()  # stops its batcher thread, which holds the weights
        del model
        gc.collect()
    got = load_answers(answers)
    for model_id in (BEFORE, AFTER):
        finishes = [a.finish_reason[0] for a in got[model_id].values() if a.finish_reason]
        words = [len(a.turns[0].split()) for a in got[model_id].values()]
        metrics[model_id]["self_stop_rate"] = sum(f == "stop" for f in finishes) / len(finishes) if finishes else None
        metrics[model_id]["mean_answer_words"] = sum(words) / len(words) if words else None
    check = ev.check or ((recipe.distill or {}).get("check") if recipe.distill else None)
    add_signal(metrics, questions, got, losses, Check(**check) if isinstance(check, dict) else check, recipe.seed,
               recipe.lang)
    if ev.judge == "none":
        write_json(out / "metrics.json", _finite(metrics))
        return _finite(metrics)

    console.print(f"judging after vs before with {ev.judge} (both orders)")
    judge = load_model(ev.judge, base_urls=ev.judge_base_url or None)
    judgments = out / "judgments.jsonl"
    judge_answers(judge, questions, {AFTER: got[AFTER], BEFORE: got[BEFORE]}, judgments, mode="pairwise",
                  lang=ev.lang, max_tokens=ev.judge_max_tokens, seed=recipe.seed, baseline=BEFORE, prompts=ev.prompts)
    if ev.single:
        judge_answers(judge, questions, {AFTER: got[AFTER], BEFORE: got[BEFORE]}, judgments, mode="single",
                      lang=ev.lang, max_tokens=ev.judge_max_tokens, seed=recipe.seed, prompts=ev.prompts)
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
        metrics["pairwise"]["judge_prompts"] = ev.prompts
        # the language of the judge's prompts: FastChat's are English; camelid's follow eval.lang or each question
        metrics["pairwise"]["judge_lang"] = "en" if ev.prompts == "mt-bench" else (
            ev.lang if ev.lang != "auto" else "+".join(sorted({q.lang for q in questions})))
    if "pairwise" not in metrics:
        metrics["pairwise"] = {"win": 0, "tie": 0, "loss": 0, "errors": 0, "n": 0, "judge": ev.judge}
    build_report([judgments], out / "report", title="camelid: after vs before training")
    write_json(out / "metrics.json", _finite(metrics))
    return _finite(metrics)


def add_signal(metrics: dict, questions, got: dict, losses: dict, check: Check | None, seed: int = 0,
               lang: str = "en") -> None:
    """Measures with intervals that need no judge: the response loss and its paired change, ROUGE-L against the
    references, self-stops with counts, and the check's pass rate (a behaviour's adherence) when one is given."""
    for model_id in (BEFORE, AFTER):
        per = losses.get(model_id) or {}
        metrics[model_id]["response_loss_ci"] = signal.ratio_ci([v[0] for v in per.values()],
                                                                [v[1] for v in per.values()], seed=seed)
    ids = sorted(set(losses.get(BEFORE) or {}) & set(losses.get(AFTER) or {}))
    b, a = losses.get(BEFORE) or {}, losses.get(AFTER) or {}
    if ids:
        change = signal.ratio([a[i][0] for i in ids], [a[i][1] for i in ids]) - \
            signal.ratio([b[i][0] for i in ids], [b[i][1] for i in ids])
        metrics["response_loss_change"] = {"change": change, "n": len(ids), "ci": signal.paired_ratio_diff_ci(
            [b[i][0] for i in ids], [b[i][1] for i in ids], [a[i][0] for i in ids], [a[i][1] for i in ids],
            seed=seed)}
        # per character: the one change comparable when training extended the tokenizer
        metrics["response_loss_per_char_change"] = {
            "change": signal.ratio([a[i][0] for i in ids], [a[i][2] for i in ids]) -
            signal.ratio([b[i][0] for i in ids], [b[i][2] for i in ids]), "n": len(ids),
            "ci": signal.paired_ratio_diff_ci([b[i][0] for i in ids], [b[i][2] for i in ids], [a[i][0] for i in ids],
                                              [a[i][2] for i in ids], seed=seed)}
    # Korean by Kiwi morphemes, Chinese by characters (rouge_score's tokenizer would delete both)
    refs = {str(q.question_id): (q.reference_output, "zh" if lang == "zh" else q.lang)
            for q in questions if q.reference_output}
    rouge = {m: {qid: signal.rouge_l(ans.turns[0], *refs[qid]) for qid, ans in got.get(m, {}).items() if qid in refs}
             for m in (BEFORE, AFTER)}
    if rouge[BEFORE] and rouge[AFTER]:
        metrics["rouge_l"] = signal.before_after(rouge[BEFORE], rouge[AFTER], seed=seed)
    common = sorted(set(got.get(BEFORE, {})) & set(got.get(AFTER, {})))
    stops = {m: [bool(got[m][q].finish_reason) and got[m][q].finish_reason[0] == "stop" for q in common]
             for m in (BEFORE, AFTER)}
    metrics["self_stop"] = {m: signal.proportion(stops[m], seed=seed) for m in (BEFORE, AFTER)}
    metrics["self_stop"]["change_ci"] = signal.paired_diff_ci(stops[BEFORE], stops[AFTER], seed=seed)
    if check is not None:
        hits = {m: [check.passes(got[m][q].turns[0]) for q in common] for m in (BEFORE, AFTER)}
        metrics["check"] = {"check": check.describe(), **{m: signal.proportion(hits[m], seed=seed)
                                                          for m in (BEFORE, AFTER)},
                            "change": (sum(hits[AFTER]) - sum(hits[BEFORE])) / len(common) if common else None,
                            "change_ci": signal.paired_diff_ci(hits[BEFORE], hits[AFTER], seed=seed)}


def _finite(obj):
    """NaN is not JSON; write null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
