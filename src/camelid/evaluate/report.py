"""`camelid eval report`: judgments -> one Markdown and one HTML report with tables and PNG charts.

Charts: mean score by category per model, win/tie/loss shares with the win rate and the length-controlled win rate
(AlpacaEval's `length_controlled_minimal` GLM) and their 95% bootstrap error bars, and answer length against score.
The same tables go into both files; the HTML embeds nothing external. Each section names the judge prompt set.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from pathlib import Path

from camelid.core.io import CamelidError, write_json, write_text
from camelid.evaluate.judge import prompt_set, read_judgments
from camelid.evaluate.stats import pairwise_summary, relative_scores, single_summary

Table = tuple[list[str], list[list[str]]]

PROMPT_SET_NOTES = {
    "camelid": "camelid's own judge prompts (not MT-bench's wording: not comparable with published MT-bench numbers)",
    "mt-bench": "FastChat's MT-bench judge prompts and verdict parsing, byte for byte (comparable with published "
                "MT-bench numbers made with the same judge model)"}
LC_NOTE = ("LC: length-controlled win rate, the GLM of AlpacaEval's `length_controlled_minimal` (the preference "
           "regressed on an intercept and tanh of the standardized length difference, read at zero difference), "
           "fitted by maximum likelihood where AlpacaEval cross-validates an L1 penalty (the same figure on large "
           "sets; on small ones AlpacaEval's may shrink toward 50%). Not AlpacaEval 2.0's leaderboard LC "
           "(`length_controlled_v1`: it adds an instruction-difficulty term and regularizes toward gamed baselines).")


def judged_prompt_set(rows: list[dict], what: str) -> str:
    """The one prompt set `rows` were judged with; averaging over two sets would mix incomparable scales."""
    sets = sorted({prompt_set(r) for r in rows})
    if len(sets) > 1:
        raise CamelidError(f"the {what} judgments were made with different judge prompt sets ({', '.join(sets)}); "
                           "report each set on its own")
    return sets[0]


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _ci(ci: tuple[float, float], fmt: str = ".2f") -> str:
    return "-" if all(math.isnan(x) for x in ci) else f"{_f(ci[0], fmt)} - {_f(ci[1], fmt)}"


def json_safe(obj):
    """NaN -> None and tuples -> lists, so summaries are strict JSON."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _setup_fonts() -> None:
    """Use a Hangul-capable fallback font when one is installed (Korean categories and model names)."""
    import matplotlib
    from matplotlib import font_manager

    matplotlib.use("Agg")
    names = {f.name for f in font_manager.fontManager.ttflist}
    fallback = [n for n in ("NanumGothic", "Nanum Gothic", "Noto Sans CJK KR") if n in names]
    matplotlib.rcParams["font.family"] = ["DejaVu Sans", *fallback]


def chart_categories(single: list[dict], path: Path) -> bool:
    import matplotlib.pyplot as plt
    import numpy as np

    summ = single_summary(single, n_boot=1)
    cats = sorted({c for s in summ for c in s["by_category"]})
    if not cats:
        return False
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(cats) * max(1, len(summ)) ** 0.5 + 2), 4.2), dpi=110)
    width = 0.8 / len(summ)
    x = np.arange(len(cats))
    for k, s in enumerate(summ):
        vals = [s["by_category"].get(c, np.nan) for c in cats]
        ax.bar(x + (k - (len(summ) - 1) / 2) * width, vals, width, label=s["model"])
    ax.set_xticks(x, cats, rotation=30 if len(cats) > 5 else 0, ha="right" if len(cats) > 5 else "center")
    ax.set_ylim(0, 10)
    ax.set_ylabel("mean judge score (1-10)")
    ax.set_title("Score by category")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


BAR_SEGMENTS = (("win_share", "#4c9a5a", "win"), ("tie_rate", "#c9ccd3", "tie"), ("loss_rate", "#d0605e", "loss"))


def chart_win_rates(pair_summ: list[dict], path: Path) -> bool:
    import matplotlib.pyplot as plt

    fig = win_rates_figure(pair_summ)
    if fig is None:
        return False
    fig.savefig(path)
    plt.close(fig)
    return True


def win_rates_figure(pair_summ: list[dict]):
    """One row per pair: a win/tie/loss stacked bar of strict shares (summing to 1), with the win rate (a tie half
    a win) and the length-controlled win rate as points carrying their 95% bootstrap intervals. None when no pair
    has a parseable verdict."""
    import matplotlib.pyplot as plt
    import numpy as np

    pair_summ = [s for s in pair_summ if s["n"]]  # pairs with no parseable verdict have nothing to draw
    if not pair_summ:
        return None
    labels = [f"{s['model_1']}\nvs {s['model_2']}" for s in pair_summ]
    y = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8, 2.0 + 0.8 * len(labels)), dpi=110)
    left = np.zeros(len(labels))
    for key, color, name in BAR_SEGMENTS:
        vals = np.nan_to_num(np.array([s[key] for s in pair_summ], float))
        ax.barh(y, vals, 0.5, left=left, color=color, label=name)
        left += vals
    for off, key, marker, name in ((-0.12, "win_rate", "o", "win rate (tie = 1/2)"),
                                   (0.12, "lc_win_rate", "D", "length-controlled win rate")):
        vals = np.array([s[key] for s in pair_summ], float)
        lo = np.array([s[key + "_ci"][0] for s in pair_summ], float)
        hi = np.array([s[key + "_ci"][1] for s in pair_summ], float)
        err = np.nan_to_num(np.vstack([vals - lo, hi - vals]).clip(min=0))
        ax.errorbar(vals, y + off, xerr=err, fmt=marker, color="black", ms=5, capsize=4, lw=1.2, label=name)
    ax.axvline(0.5, color="k", lw=0.8, ls="--")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel("share of questions for the first model (bars); win rates with 95% bootstrap CI (points)")
    ax.set_title("Pairwise: both orders judged, a disagreement is a tie")
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="lower center", ncol=5, frameon=False)
    fig.tight_layout(rect=(0, 0.12 / (1 + 0.5 * len(labels)), 1, 1))
    return fig


def chart_length(single: list[dict], path: Path) -> bool:
    import matplotlib.pyplot as plt

    pts: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in single:
        if r.get("score") is not None and r.get("answer_chars") is not None:
            pts[r["model"]].append((r["answer_chars"], r["score"]))
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=110)
    for m, p in sorted(pts.items()):
        ax.scatter([a for a, _ in p], [b for _, b in p], s=18, alpha=0.7, label=m)
    ax.set_xlabel("answer length (characters)")
    ax.set_ylabel("judge score (1-10)")
    ax.set_ylim(0.5, 10.5)
    ax.set_title("Answer length vs score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _md_table(t: Table) -> str:
    head, rows = t
    esc = [[c.replace("|", "\\|").replace("\n", " ") for c in r] for r in rows]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |"
                                                                              for r in esc])


def _html_table(t: Table) -> str:
    head, rows = t
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def build_report(paths: list[str | Path], out_dir: str | Path, baseline: str | None = None, seed: int = 0,
                 title: str = "camelid evaluation report") -> dict:
    """Write report.md, report.html, summary.json and the PNG charts into `out_dir`; return the summary."""
    single, pair = read_judgments(paths)
    if not single and not pair:
        raise CamelidError(f"no judgments found in {', '.join(map(str, paths))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _setup_fonts()
    sections: list[tuple[str, str, list[Table | str]]] = []  # (heading, intro, tables and image names)
    summary: dict = {"judgment_files": [str(p) for p in paths]}

    sets = {"single": judged_prompt_set(single, "single") if single else None,
            "pairwise": judged_prompt_set(pair, "pairwise") if pair else None}
    summary["judge_prompts"] = {k: v for k, v in sets.items() if v}
    if single:
        ss = single_summary(single, seed=seed)
        summary["single"] = ss
        turns = sorted({t for s in ss for t in s["by_turn"]})
        rel = relative_scores(single, baseline) if baseline else {}
        summary["relative_scores"] = rel
        head = ["model", "mean score", "95% CI", "judged", "unparsed"] + [f"turn {t}" for t in turns if len(turns) > 1]
        head += [f"relative to {baseline}"] if rel else []
        rows = [[s["model"], _f(s["mean"]), _ci(s["mean_ci"]), str(s["n"]), str(s["unparsed"])]
                + [_f(s["by_turn"].get(t)) for t in turns if len(turns) > 1]
                + ([_f(rel.get(s["model"]), ".1%")] if rel else []) for s in sorted(ss, key=lambda s: -_nz(s["mean"]))]
        cats = sorted({c for s in ss for c in s["by_category"]})
        cat_t = (["category"] + [s["model"] for s in ss],
                 [[c] + [_f(s["by_category"].get(c)) for s in ss] for c in cats])
        items: list[Table | str] = [(head, rows)]
        if chart_categories(single, out / "score_by_category.png"):
            items.append("score_by_category.png")
        if cats:
            items.append(cat_t)
        if chart_length(single, out / "length_vs_score.png"):
            items.append("length_vs_score.png")
        judges = sorted({r["judge"] for r in single})
        unparsed = sum(s["unparsed"] for s in ss)
        sections.append(("Single-answer grading", f"Judge: {', '.join(judges)}, with {sets['single']}: "
                         f"{PROMPT_SET_NOTES[sets['single']]}. Scores 1-10; {unparsed} of "
                         f"{len(single)} judge replies had no parseable [[rating]]: they are kept in the judgment "
                         "file with a null score and left out of the means. Relative score: Vicuna's total score "
                         "of a model over the baseline's, on the turns both were scored.", items))
    if pair:
        ps = pairwise_summary(pair, seed=seed)
        summary["pairwise"] = ps
        head = ["model_1 vs model_2", "win", "tie", "loss", "win rate", "95% CI", "LC win rate", "95% CI",
                "swap disagreements", "errors"]
        rows = [[f"{s['model_1']} vs {s['model_2']}", str(s["win"]), str(s["tie"]), str(s["loss"]),
                 _f(s["win_rate"], ".1%"), _ci(s["win_rate_ci"], ".1%"), _f(s["lc_win_rate"], ".1%"),
                 _ci(s["lc_win_rate_ci"], ".1%"), str(s["swap_disagreements"]), str(s["errors"])] for s in ps]
        items = [(head, rows)]
        if chart_win_rates(ps, out / "win_rates.png"):
            items.append("win_rates.png")
        judges = sorted({r["judge"] for r in pair})
        sections.append(("Pairwise comparison", f"Judge: {', '.join(judges)}, with {sets['pairwise']}: "
                         f"{PROMPT_SET_NOTES[sets['pairwise']]}. Every pair was judged in both orders; when the two "
                         "verdicts disagree the pair is a tie (position bias removed). Win, tie and loss are strict "
                         "shares of the questions (the bar); win rate counts a tie as half a win. " + LC_NOTE
                         + " Errors: a verdict could not be parsed.", items))

    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, intro, items in sections:
        md += [f"## {heading}", "", intro, ""]
        body += [f"<h2>{html.escape(heading)}</h2>", f"<p>{html.escape(intro)}</p>"]
        for it in items:
            if isinstance(it, str):
                md += [f"![{it}]({it})", ""]
                body.append(f"<p><img src='{html.escape(it)}' alt='{html.escape(it)}'></p>")
            else:
                md += [_md_table(it), ""]
                body.append(_html_table(it))
    write_text(out / "report.md", "\n".join(md))
    write_text(out / "report.html", "<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title)
               + "</title><style>body{font-family:system-ui,'Nanum Gothic',sans-serif;max-width:1100px;margin:2em "
               "auto;padding:0 1em;color:#1d2330}table{border-collapse:collapse;margin:1em 0}th,td{padding:4px 10px;"
               "border-bottom:1px solid #ddd;text-align:right}th:first-child,td:first-child{text-align:left}"
               "img{max-width:100%}</style></head><body>" + "\n".join(body) + "</body></html>\n")
    write_json(out / "summary.json", json_safe(summary))
    return summary


def _nz(x: float) -> float:
    return -1.0 if math.isnan(x) else x
