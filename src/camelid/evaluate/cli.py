"""`camelid eval answer|judge|report|bench` and `camelid arena`: thin commands over the evaluate library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from camelid.core.cli import (ApiKeyOpt, BaseUrlOpt, ColumnsOpt, DeviceOpt, Load4Opt, Load8Opt, ModelOpt, NumGpusOpt, TemplateOpt,
                              console)
from camelid.core.columns import using_columns
from camelid.core.io import CamelidError, write_json
from camelid.evaluate import arena as ar, arena_web
from camelid.evaluate.answer import answer_questions
from camelid.evaluate.harness import metrics_table, run_bench, save_results
from camelid.evaluate.judge import judge_answers, read_judgments
from camelid.evaluate.judge_prompts import check_prompt_set
from camelid.evaluate.questions import load_answers, load_questions, reference_answers
from camelid.evaluate.report import build_report, json_safe
from camelid.evaluate.stats import pairwise_summary, relative_scores, single_summary
from camelid.models import load_model

app = typer.Typer(no_args_is_help=True)

QuestionsOpt = Annotated[Path, typer.Option("--questions", "-q", help="Eval set: Vicuna/MT-bench JSONL, self-instruct "
                                            "user-oriented JSONL, AlpacaEval JSON, Alpaca JSON/JSONL or .txt.")]
MoreAnswers = Annotated[Optional[list[Path]], typer.Argument(
    help="More answer files (so `--answers A.jsonl B.jsonl` works).", show_default=False)]
ConcurrencyOpt = Annotated[Optional[int], typer.Option("--concurrency", min=1, help="Requests in flight (default: "
                                                       "the backend's own: 1 for local models, 8 for servers).")]


def _answers(first: list[Path] | None, more: list[Path] | None) -> list[Path]:
    files = [*(first or []), *(more or [])]
    if not files:
        raise CamelidError("no answer files given (--answers FILE [FILE...])")
    return files


def _merge_answers(files: list[Path]) -> dict:
    merged: dict = {}
    for f in files:
        for model, rows in load_answers(f).items():
            merged.setdefault(model, {}).update(rows)
    return merged


@app.command()
def answer(
    questions: QuestionsOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Answer JSONL (FastChat's shape); appended, a "
                                         "rerun skips answered questions.")],
    model: ModelOpt = "embedded",
    model_id: Annotated[Optional[str], typer.Option("--model-id", help="Name in the answer rows (default: the "
                                                    "model's name).")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", "-t", min=0.0, help="Default: MT-bench's "
                                                         "per-category temperatures (0.7 otherwise).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 1024,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N questions.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    system: Annotated[Optional[str], typer.Option("--system", help="System message for every question.")] = None,
    concurrency: ConcurrencyOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    template: TemplateOpt = None,
    device: DeviceOpt = None,
    num_gpus: NumGpusOpt = None,
    load_8bit: Load8Opt = False,
    load_4bit: Load4Opt = False,
    columns: ColumnsOpt = None,
) -> None:
    """Answer an eval set with a model (multi-turn questions turn by turn, earlier answers in context)."""
    with using_columns(columns):
        qs = load_questions(questions, limit)
    m = load_model(model, base_urls=base_url, api_key=api_key, template=template, device=device, num_gpus=num_gpus,
                   load_8bit=load_8bit, load_4bit=load_4bit)
    try:
        with console.status(f"answering {len(qs)} questions with {m.name}") as st:
            n = [0]

            def done(row: dict) -> None:
                n[0] += 1
                st.update(f"answered {n[0]} (question {row['question_id']})")

            stats = answer_questions(m, qs, output, model_id=model_id, temperature=temperature, max_tokens=max_tokens,
                                     top_p=top_p, seed=seed, system=system, concurrency=concurrency, on_done=done)
    finally:
        m.close()
    tps = stats.completion_tokens / stats.seconds if stats.seconds else 0.0
    console.print(f"{output}: {stats.answered} answered, {stats.skipped} already there, {len(stats.failed)} failed "
                  f"({stats.completion_tokens} tokens in {stats.seconds:.1f} s, {tps:.0f} tokens/s)", soft_wrap=True)
    for qid, err in stats.failed[:5]:
        console.print(f"  question {qid}: {err}")
    if stats.failed:
        raise CamelidError(f"{len(stats.failed)} question(s) failed; rerun the same command to retry them")


@app.command()
def judge(
    questions: QuestionsOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Judgment JSONL; appended, a rerun skips what is "
                                         "already judged.")],
    answers: Annotated[Optional[list[Path]], typer.Option("--answers", "-a", help="Answer JSONL file(s).")] = None,
    more: MoreAnswers = None,
    judge_spec: Annotated[str, typer.Option("--judge", "-j", help="Judge model spec (like --model).")] = "embedded",
    mode: Annotated[str, typer.Option("--mode", help="single (1-10 score) | pairwise (A vs B, both "
                                      "orders).")] = "single",
    reference: Annotated[Optional[Path], typer.Option("--reference", help="Reference answers (answer JSONL) for "
                                                      "math/reasoning/coding questions.")] = None,
    lang: Annotated[str, typer.Option("--lang", help="Judge prompt language: en | ko | zh | auto (from "
                                      "each question's text); camelid's prompts only.")] = "auto",
    prompts: Annotated[str, typer.Option("--prompts", help="Judge prompt set: camelid (its own, English, "
                                         "Korean and Chinese) | mt-bench (FastChat's MT-bench judge prompts and "
                                         "verdict parsing, byte for byte: scores comparable with published MT-bench "
                                         "numbers; English, two turns at most).")] = "camelid",
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="Model id every other model is compared "
                                                    "with (pairwise) or scored relative to (single). The question "
                                                    "file's reference outputs (AlpacaEval `output`) join as the "
                                                    "baseline when one model is given.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 1024,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0)] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Judge sampling and bootstrap seed.")] = 0,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N questions.")] = None,
    summary: Annotated[Optional[Path], typer.Option("--summary", help="Also write the summary as JSON.")] = None,
    concurrency: ConcurrencyOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    template: TemplateOpt = None,
) -> None:
    """Judge answers with an LLM: single 1-10 grading or pairwise comparison; prints scores / win rates."""
    check_prompt_set(prompts, lang)  # before loading anything
    qs = load_questions(questions, limit)
    ans = _merge_answers(_answers(answers, more))
    refs = reference_answers(qs)
    # the question file's reference outputs (AlpacaEval `output`) are a contestant when named as the baseline, or
    # as the default opponent of a single model in pairwise mode
    if refs and (baseline in refs or (mode == "pairwise" and len(ans) == 1)):
        for gen, rows in refs.items():
            ans.setdefault(gen, rows)
        if baseline is None and mode == "pairwise":
            baseline = next(iter(refs))
    ref_answers = None
    if reference is not None:
        ref_models = load_answers(reference)
        ref_answers = next(iter(ref_models.values()), {})
    m = load_model(judge_spec, base_urls=base_url, api_key=api_key, template=template)
    try:
        with console.status(f"judging with {m.name} ({mode}, {prompts} prompts)") as st:
            n = [0]

            def done(row: dict) -> None:
                n[0] += 1
                st.update(f"judged {n[0]}")

            stats = judge_answers(m, qs, ans, output, mode=mode, lang=lang,  # type: ignore[arg-type]
                                  ref_answers=ref_answers, baseline=baseline, max_tokens=max_tokens,
                                  temperature=temperature, seed=seed, concurrency=concurrency, prompts=prompts,
                                  on_done=done)
    finally:
        m.close()
    console.print(f"{output}: {stats.judged} judged, {stats.cached} cached, {stats.unparsed} without a parseable "
                  f"verdict (kept, score null), {len(stats.failed)} failed, {stats.seconds:.1f} s; judge prompts: "
                  f"{prompts}", soft_wrap=True)
    single, pair = read_judgments([output])
    res = _print_summary(single, pair, baseline, seed)
    if summary is not None:
        write_json(summary, json_safe({"judge_prompts": prompts, "stats": {
            "judged": stats.judged, "cached": stats.cached, "unparsed": stats.unparsed, "failed": stats.failed},
            **res}))
    if stats.failed:
        raise CamelidError(f"{len(stats.failed)} judgment(s) failed; rerun the same command to retry them")


def _print_summary(single: list[dict], pair: list[dict], baseline: str | None, seed: int) -> dict:
    out: dict = {}
    if single:
        ss = single_summary(single, seed=seed)
        rel = relative_scores(single, baseline) if baseline else {}
        out.update(single=ss, relative_scores=rel)
        t = Table(title="single-answer grading (1-10)")
        for c in ["model", "mean", "95% CI", "judged", "unparsed"] + ([f"vs {baseline}"] if rel else []):
            t.add_column(c)
        for s in ss:
            t.add_row(s["model"], f"{s['mean']:.2f}", f"{s['mean_ci'][0]:.2f}-{s['mean_ci'][1]:.2f}", str(s["n"]),
                      str(s["unparsed"]), *([f"{rel.get(s['model'], float('nan')):.1%}"] if rel else []))
        console.print(t)
    if pair:
        ps = pairwise_summary(pair, seed=seed)
        out["pairwise"] = ps
        t = Table(title="pairwise (both orders; disagreement = tie)")
        for c in ["model_1 vs model_2", "W/T/L", "win rate [95% CI]", "LC win rate [95% CI]", "order flips",
                  "errors"]:
            t.add_column(c)
        for s in ps:
            t.add_row(f"{s['model_1']} vs {s['model_2']}", f"{s['win']}/{s['tie']}/{s['loss']}",
                      f"{s['win_rate']:.1%} [{s['win_rate_ci'][0]:.0%}-{s['win_rate_ci'][1]:.0%}]",
                      f"{s['lc_win_rate']:.1%} [{s['lc_win_rate_ci'][0]:.0%}-{s['lc_win_rate_ci'][1]:.0%}]",
                      str(s["swap_disagreements"]), str(s["errors"]))
        console.print(t)
        if len(pair) <= 20:
            console.print(_pair_details(pair))
    return out


def _pair_details(pair: list[dict]):
    """Each pair's two games (who was A, the raw verdict) and the combined result: the swap and the tie rule."""
    t = Table(title="each pair, judged in both orders")
    for c in ("question", "game 1: A / B -> verdict", "game 2 (swapped): A / B -> verdict", "result"):
        t.add_column(c)
    def order(r: dict) -> tuple:  # numeric ids in numeric order (2 before 10), then string ids
        q = r["question_id"]
        return (isinstance(q, str), q if isinstance(q, int) else 0, str(q), r.get("turn") or 1)

    for r in sorted(pair, key=order):
        g1, g2 = r["g1"], r["g2"]
        res = r["winner_model"] if r["winner"] != "error" else "error (unparsed verdict)"
        if r["winner"] == "tie" and not r["swap_agree"]:
            res = "tie (the orders disagree)"
        t.add_row(f"{r['question_id']}" + (f" turn {r['turn']}" if r.get("turn", 1) > 1 else ""),
                  f"{g1['A']} / {g1['B']} -> {g1['verdict'] or '?'}",
                  f"{g2['A']} / {g2['B']} -> {g2['verdict'] or '?'}", res)
    return t


@app.command()
def report(
    judgments: Annotated[list[Path], typer.Argument(help="Judgment JSONL files (single and/or pairwise).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder (report.md, report.html, PNGs).")],
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="Model for Vicuna's relative total "
                                                    "score.")] = None,
    title: Annotated[str, typer.Option("--title")] = "camelid evaluation report",
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Write a Markdown + HTML report with tables and charts from judgment files."""
    build_report(judgments, output, baseline=baseline, seed=seed, title=title)
    console.print(f"{output}/report.md, report.html and charts written", soft_wrap=True)


@app.command()
def bench(
    tasks: Annotated[list[str], typer.Option("--tasks", help="lm_eval task name or task YAML (repeat, or "
                                             "comma-separated).")],
    model: ModelOpt = "embedded",
    limit: Annotated[Optional[float], typer.Option("--limit", help="Examples per task (a fraction if < 1).")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option("--num-fewshot", min=0)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write lm_eval's results as JSON.")] = None,
    log_samples: Annotated[bool, typer.Option("--log-samples", help="Keep per-example responses in --output.")] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = None,
) -> None:
    """Benchmarks (Open LLM Leaderboard kind) through lm-evaluation-harness, on local task data."""
    names = [t.strip() for item in tasks for t in item.split(",") if t.strip()]
    lim = int(limit) if limit is not None and limit >= 1 else limit
    res = run_bench(model, names, limit=lim, num_fewshot=num_fewshot, batch_size=batch_size, device=device,
                    seed=seed, log_samples=log_samples or output is not None)
    t = Table(title=f"lm-eval: {res['model']['name']}")
    for c in ("task", "metric", "value", "stderr", "n"):
        t.add_column(c)
    rows = metrics_table(res)
    for r in rows:
        t.add_row(r["task"], r["metric"], f"{r['value']:.4f}", "-" if r["stderr"] is None else f"{r['stderr']:.4f}",
                  str(r["n"]))
    console.print(t)
    if output is not None:
        if not log_samples:
            res.pop("samples", None)
        save_results(res, output)
    print(json.dumps(rows, ensure_ascii=False))


def arena(
    answers: Annotated[Optional[list[Path]], typer.Option("--answers", "-a", help="Answer JSONL files (two "
                                                          "models or more).")] = None,
    more: MoreAnswers = None,
    questions: Annotated[Optional[Path], typer.Option("--questions", "-q", help="The eval set the answers "
                                                      "answer.")] = None,
    db: Annotated[Path, typer.Option("--db", help="SQLite vote database (WAL, committed per vote).")] = Path(
        "votes.sqlite"),
    port: Annotated[int, typer.Option("--port")] = 8001,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    seed: Annotated[int, typer.Option("--seed", help="Seeds each session's order of items and sides.")] = 0,
    results: Annotated[bool, typer.Option("--results", help="Print win rates and Bradley-Terry ratings from --db "
                                          "and exit.")] = False,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="CAMELID_ARENA_KEY", show_envvar=False,
        help="Vote key: raters enter it on the page; the voting API requires it (default $CAMELID_ARENA_KEY; "
        "none: open).")] = None,
    allow_host: Annotated[Optional[list[str]], typer.Option(
        "--allow-host", help="Also answer requests whose Host header names this host (repeatable; on a loopback "
        "bind only loopback names are answered by default).")] = None,
) -> None:
    """Blind pairwise human evaluation in the browser (Alpaca's): vote A / B / tie / both bad."""
    if results:
        res = ar.results(db)
        _print_arena(res)
        print(json.dumps(json_safe(res), ensure_ascii=False))
        return
    if questions is None:
        raise CamelidError("--questions is required to serve the arena")
    a = ar.Arena(load_questions(questions), _merge_answers(_answers(answers, more)), db, seed)
    console.print(f"arena: {len(a.items)} items over {len(a.models)} models, votes in {db}; "
                  f"open http://{host}:{port}/ (results at /results)")
    if api_key is not None and not api_key.strip():
        raise CamelidError("--api-key is empty")
    arena_web.serve(a, host, port, api_key=api_key, allowed_hosts=allow_host or ())


def _print_arena(res: dict) -> None:
    v = res["votes"]
    t = Table(title=f"arena: {res['battles']} battles ({v['tie']} ties, {v['bad']} both bad, {v['skip']} skipped)")
    for c in ("model", "Elo (BT)", "95% CI", "win rate", "95% CI", "battles"):
        t.add_column(c)
    for m in res["models"]:
        t.add_row(m["model"], f"{m['elo']:.0f}", f"{m['elo_ci'][0]:.0f}-{m['elo_ci'][1]:.0f}", f"{m['win_rate']:.1%}",
                  f"{m['win_rate_ci'][0]:.0%}-{m['win_rate_ci'][1]:.0%}", str(m["battles"]))
    console.print(t)
