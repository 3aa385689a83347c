"""The run's summary table (terminal) and one Markdown + HTML report with a chart per stage."""

from __future__ import annotations

import html
import shutil
from pathlib import Path

from rich.table import Table

from camelid.core.cli import console
from camelid.core.io import read_jsonl, write_json, write_text
from camelid.generate.filters import INSTANCE_REASONS, INSTRUCTION_REASONS
from camelid.generate.quality import OUTPUT_REASONS
from camelid.pipeline.recipe import Recipe

NOT_MEASURED = "not measured"
JUDGE_HINT = ("for a judged comparison use a real judge: eval.judge: openai:NAME with eval.judge_base_url in the "
              "recipe, or `camelid eval judge --judge openai:NAME --base-url URL`")


def _fmt(x, spec: str = ".3f") -> str:
    if x is None:
        return NOT_MEASURED
    return format(x, spec) if isinstance(x, float) else str(x)


def _ci(ci, spec: str = ".3f") -> str:
    return f" [{format(ci[0], spec)}, {format(ci[1], spec)}]" if ci and None not in ci else ""


def _signed(x, spec: str = "+.3f") -> str:
    return NOT_MEASURED if x is None else format(x, spec)


def _prop(p: dict | None) -> str:
    """'8/16 (50%) [25%, 75%]' from a signal.proportion dict."""
    if not p or not p.get("n"):
        return "no answers"
    return f"{p['k']}/{p['n']} ({p['rate']:.0%}){_ci(p.get('ci'), '.0%')}"


def _points(change, ci) -> str:
    if change is None:
        return NOT_MEASURED
    out = f"{100 * change:+.0f} points"
    return out + (f" [{100 * ci[0]:+.0f}, {100 * ci[1]:+.0f}]" if ci and None not in ci else "")


def _reason_text(reason: str) -> str:

    known = {**INSTRUCTION_REASONS, **INSTANCE_REASONS, **OUTPUT_REASONS,
             "check_failed": "the teacher's answer failed the behaviour check",
             "truncated": "cut off by the token limit", "malformed": "not in the expected task format",
             "empty_output": "the output is empty"}
    return f"rejected: {reason}" + (f" ({known[reason]})" if reason in known else "")


def summary_rows(s: dict) -> list[tuple[str, str, str]]:
    """(stage, measure, value) rows: what a person wants to see at a glance."""
    rows: list[tuple[str, str, str]] = []
    g = s.get("generate")
    if g:
        rows.append(("generate", "kept / candidates", f"{g.get('kept')} / {g.get('candidates')}"))
        if not g.get("rejected"):
            rows.append(("generate", "rejected", "none"))
        for reason, n in sorted((g.get("rejected") or {}).items(), key=lambda kv: -kv[1]):
            rows.append(("generate", _reason_text(reason), str(n)))
        rows += [("generate", "failed teacher request", err) for err in g.get("errors") or []]
        tc = g.get("teacher_check")
        if tc:
            rows.append(("generate", f"teacher answers that pass the check ({tc['check']})",
                         f"{tc['k']}/{tc['n']}" + (f" ({tc['k'] / tc['n']:.0%})" if tc["n"] else "")))
        rows.append(("generate", "teacher tokens", _fmt(g.get("tokens"))))
        rows.append(("generate", "time", f"{g.get('seconds')} s"))
    t = s.get("train")
    if t:
        rows += [("train", "method / template", f"{t.get('method')} / {t.get('template')}"),
                 ("train", "records kept / read", f"{t.get('kept')} / {t.get('records')}"),
                 ("train", "steps", str(t.get("steps"))), ("train", "final loss", _fmt(t.get("final_loss"))),
                 ("train", "time", f"{t.get('train_time_s')} s"),
                 ("train", "tokens seen", str(t.get("tokens_seen"))),
                 ("train", "peak memory", f"{t.get('peak_memory_mb')} MB"),
                 ("train", "trainable parameters", f"{t.get('trainable_params'):,}" if t.get("trainable_params")
                  else NOT_MEASURED)]
        rows += [("train", "note", p) for p in t.get("problems") or []]
        tok = t.get("tokenizer")
        if tok:
            rows.append(("train", "vocabulary (extended)", f"{tok['base_vocab_size']:,} → {tok['vocab_size']:,} "
                         f"(+{tok['added']:,})"))
        for st in t.get("stages") or []:
            rows.append((f"train: {st['name']}", "method / steps / final loss / time",
                         f"{st.get('method')} / {st.get('steps')} / {_fmt(st.get('final_loss'))} / "
                         f"{st.get('train_time_s')} s"))
    e = s.get("eval")
    if e:
        rows += eval_rows(e)
    return rows


def _before_after(before, before_ci, after, after_ci) -> str:
    return f"{_fmt(before)}{_ci(before_ci)} → {_fmt(after)}{_ci(after_ci)}"


def _change(change, ci) -> str:
    return f"{_signed(change)}{_ci(ci, '+.3f')}"


def eval_rows(e: dict) -> list[tuple[str, str, str]]:
    """Before -> after with 95% bootstrap intervals (paired for the changes); the judge's verdicts, or in words
    why there are none."""
    b, a = e.get("before", {}), e.get("after", {})
    n = e.get("questions")
    rows = [("eval", "held-out questions", str(n))]
    chk = e.get("check")
    if chk:
        rows += [("eval", f"behaviour check: answer {chk['check']} (before → after)",
                  f"{_prop(chk.get('before'))} → {_prop(chk.get('after'))}"),
                 ("eval", "behaviour check: change (paired 95% CI)", _points(chk.get("change"), chk.get("change_ci")))]
    rows.append(("eval", "held-out response loss, 95% CI (before → after)",
                 _before_after(b.get("response_loss"), b.get("response_loss_ci"), a.get("response_loss"),
                               a.get("response_loss_ci"))))
    lc = e.get("response_loss_change")
    if lc:
        rows.append(("eval", "response loss change (paired 95% CI; lower is better)",
                     _change(lc.get("change"), lc.get("ci"))))
    if a.get("response_loss_per_char") is not None:  # comparable when the tokenizers differ; per token is not
        rows.append(("eval", "held-out response loss per character, 95% CI (before → after)",
                     _before_after(b.get("response_loss_per_char"), b.get("response_loss_per_char_ci"),
                                   a.get("response_loss_per_char"), a.get("response_loss_per_char_ci"))))
        cc = e.get("response_loss_per_char_change")
        if cc:
            rows.append(("eval", "response loss per character change (paired 95% CI; lower is better)",
                         _change(cc.get("change"), cc.get("ci"))))
        rows.append(("eval", "tokens per character of the held-out answers (before → after)",
                     f"{_fmt(b.get('tokens_per_char'), '.2f')} → {_fmt(a.get('tokens_per_char'), '.2f')}"))
    rl = e.get("rouge_l")
    if rl and rl.get("n"):
        rows += [("eval", f"ROUGE-L F1 vs references, 95% CI (before → after, {rl['n']} answers)",
                  _before_after(rl.get("before"), rl.get("before_ci"), rl.get("after"), rl.get("after_ci"))),
                 ("eval", "ROUGE-L change (paired 95% CI)", _change(rl.get("change"), rl.get("change_ci")))]
    st = e.get("self_stop")
    if st:
        rows.append(("eval", "answers that stop by themselves (before → after)",
                     f"{_prop(st.get('before'))} → {_prop(st.get('after'))}"))
    else:
        rows.append(("eval", "answers that stop by themselves (before → after)",
                     f"{_fmt(b.get('self_stop_rate'), '.0%')} → {_fmt(a.get('self_stop_rate'), '.0%')}"))
    rows.append(("eval", "mean answer words (before → after)",
                 f"{_fmt(b.get('mean_answer_words'), '.0f')} → {_fmt(a.get('mean_answer_words'), '.0f')}"))
    p = e.get("pairwise")
    if not p:
        rows.append(("eval", "judge", "not run (eval.judge: none); " + JUDGE_HINT))
    elif not p.get("n"):
        rows.append(("eval", "judge", f"{p.get('judge', 'the judge')} gave no parseable verdict"
                     f" ({p.get('errors', 0)} replies unreadable), so there is no win rate; " + JUDGE_HINT))
    else:
        ci = p.get("after_win_rate_ci")
        lang = f", {p['judge_lang']}" if p.get("judge_lang") else ""
        rows += [("eval", f"judge ({p.get('judge_prompts') or 'camelid'} prompts{lang}): after vs before "
                  "(win/tie/loss)", f"{p['win']}/{p['tie']}/{p['loss']}"
                  + (f" ({p['errors']} unparsed)" if p.get("errors") else "")),
                 ("eval", "after win rate (95% CI)", f"{_fmt(p.get('after_win_rate'), '.0%')}{_ci(ci, '.0%')}")]
    return rows


def _charts(recipe: Recipe, run_dir: Path, s: dict, out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts: list[tuple[str, str]] = []
    g = s.get("generate")
    if g and (g.get("rejected") or g.get("kept")):
        items = [("kept", g.get("kept", 0))] + sorted((g.get("rejected") or {}).items(), key=lambda kv: -kv[1])
        fig, ax = plt.subplots(figsize=(7, 0.4 * len(items) + 1.2))
        ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1],
                color=["#888"] * (len(items) - 1) + ["#2a7"])
        ax.set_title("Generated candidates: kept and rejected by reason")
        fig.tight_layout()
        fig.savefig(out / "generate.png", dpi=110)
        plt.close(fig)
        charts.append(("generate.png", "Generation: kept vs rejected by reason"))
    log = recipe.model_dir / "trainer_log.jsonl"
    if log.is_file():
        rows = [r for _, r in read_jsonl(log) if isinstance(r, dict) and r.get("loss") is not None]
        if rows:
            fig, ax = plt.subplots(figsize=(7, 3.2))
            ax.plot([r.get("step", i) for i, r in enumerate(rows)], [r["loss"] for r in rows], label="train loss")
            ev = [r for _, r in read_jsonl(log) if isinstance(r, dict) and r.get("eval_loss") is not None]
            if ev:
                ax.plot([r["step"] for r in ev], [r["eval_loss"] for r in ev], "o-", label="eval loss")
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("loss per trained token")
            ax.legend()
            ax.set_title("Training loss")
            fig.tight_layout()
            fig.savefig(out / "train_loss.png", dpi=110)
            plt.close(fig)
            charts.append(("train_loss.png", "Training loss"))
    e = s.get("eval")
    if e:
        chk = e.get("check")
        fig, axes = plt.subplots(1, 4 if chk else 3, figsize=(13 if chk else 10, 3.2))
        for ax, key, title in ((axes[0], "response_loss", "held-out response loss"),
                               (axes[1], "self_stop_rate", "answers that stop")):
            vals = [e.get(m, {}).get(key) for m in ("before", "after")]
            ax.bar(["before", "after"], [v if v is not None else 0 for v in vals], color=["#999", "#2a7"])
            ax.set_title(title)
        p = e.get("pairwise")
        if p:
            axes[2].bar(["after wins", "tie", "before wins"], [p["win"], p["tie"], p["loss"]],
                        color=["#2a7", "#bbb", "#999"])
            axes[2].set_title("judge verdicts (swap-checked)")
        else:
            axes[2].text(0.5, 0.5, "no judge verdicts", ha="center", va="center")
            axes[2].set_axis_off()
        if chk:
            rates = [(chk.get(m) or {}).get("rate") or 0 for m in ("before", "after")]
            axes[3].bar(["before", "after"], rates, color=["#999", "#2a7"])
            axes[3].set_ylim(0, 1)
            axes[3].set_title(f"answers that {chk['check']}"[:40])
        fig.tight_layout()
        fig.savefig(out / "eval.png", dpi=110)
        plt.close(fig)
        charts.append(("eval.png", "Before vs after training"))
        sub = run_dir / "eval" / "report" / "win_rates.png"
        if sub.is_file():
            shutil.copyfile(sub, out / "win_rates.png")
            charts.append(("win_rates.png", "Pairwise win rate with bootstrap 95% CI"))
    return charts


def write_report(recipe: Recipe, run_dir: Path, summaries: dict) -> Path:
    """Print the summary table and write RUN_DIR/report/{report.md, report.html, summary.json, *.png}."""
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(summaries)
    table = Table(title=f"camelid run: {recipe.name}", show_lines=False)
    for col in ("stage", "measure", "value"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    console.print(table)
    charts = _charts(recipe, run_dir, summaries, out)
    md = [f"# camelid run: {recipe.name}", "", f"Run directory: `{run_dir}`", "", "| stage | measure | value |",
          "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows] + [""]
    body = [f"<h1>camelid run: {html.escape(recipe.name)}</h1>",
            "<table><tr><th>stage</th><th>measure</th><th>value</th></tr>"]
    body += [f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>" for a, b, c in rows]
    body.append("</table>")
    for name, caption in charts:
        md += [f"## {caption}", "", f"![{caption}]({name})", ""]
        body += [f"<h2>{html.escape(caption)}</h2>", f"<img src='{name}' alt='{html.escape(caption)}'>"]
    if (run_dir / "eval" / "report" / "report.html").is_file():
        md += ["Judge details: [eval/report/report.md](../eval/report/report.md)", ""]
        body.append("<p>Judge details: <a href='../eval/report/report.html'>eval/report/report.html</a></p>")
    write_text(out / "report.md", "\n".join(md))
    write_text(out / "report.html", "<!doctype html><html><head><meta charset='utf-8'><title>camelid run</title>"
               "<style>body{font-family:system-ui,'Nanum Gothic',sans-serif;max-width:1000px;margin:2em auto;"
               "padding:0 1em}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}"
               "img{max-width:100%}</style></head><body>" + "\n".join(body) + "</body></html>\n")
    write_json(out / "summary.json", summaries)
    console.print(f"report: {out / 'report.html'}")
    return out
