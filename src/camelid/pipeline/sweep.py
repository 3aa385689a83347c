"""`camelid sweep SWEEP.yaml`: a base recipe times axes (methods x datasets x models x seeds), one comparable report.

Every cell is a normal run directory (`camelid run` with overrides), so a cell can be rerun or inspected alone, and
a finished cell is skipped on a rerun (its stages are unchanged). Every cell is evaluated the same way: the base
recipe's eval section (same held-out set, judge, judge prompts and decoding) against the same fixed baseline, the
untrained base model. A failing cell is reported and the sweep goes on.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from rich import box
from rich.table import Table

from camelid.core.cli import console
from camelid.core.config import validate
from camelid.core.io import CamelidError, read_yaml_mapping, write_json, write_text

METRICS = [  # (key, label, short label for the terminal, higher is better, format)
    ("after_response_loss_per_char", "held-out response loss per character", "loss/char", False, ".3f"),
    ("after_response_loss", "held-out response loss per token", "loss", False, ".3f"),
    ("after_tokens_per_char", "tokens per character", "tok/char", False, ".2f"),
    ("after_win_rate", "win rate vs base (judge)", "win", True, ".0%"),
    ("after_single_score", "judge score 1-10", "score", True, ".2f"),
    ("after_self_stop_rate", "self-stop rate", "stops", True, ".0%"),
    ("train_time_s", "training time (s)", "time s", False, ",.0f"),
    ("peak_memory_mb", "peak memory (MB)", "peak MB", False, ",.0f"),
    ("trainable_params", "trainable parameters", "trainable", False, ",.0f"),
    ("tokens_seen", "tokens seen", "tokens", False, ",.0f"),
]


class Sweep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "sweep"
    recipe: str = Field(..., description="base recipe (path relative to this file)")
    axes: dict[str, list[Any]] = Field(..., description="override key -> values, e.g. train.method: [full, lora]")
    run_dir: str | None = Field(None, description="cells go to RUN_DIR/<cell> (default runs/NAME)")

    @property
    def directory(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")


def load_sweep(path: str | Path) -> tuple[Sweep, Path]:
    p = Path(path)
    sweep = validate(Sweep, read_yaml_mapping(p, "sweep settings", kind="sweep"), p)
    base = Path(sweep.recipe)
    base = base if base.is_absolute() else p.resolve().parent / base
    if not base.is_file():
        raise CamelidError(f"{p}: recipe {sweep.recipe!r} not found")
    for key, values in sweep.axes.items():
        if not isinstance(values, list) or not values:
            raise CamelidError(f"{p}: axes.{key}: expected a non-empty list of values")
    return sweep, base


def cells(sweep: Sweep) -> list[dict[str, Any]]:
    keys = list(sweep.axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep.axes[k] for k in keys))]


def cell_name(cell: dict[str, Any]) -> str:
    return "_".join(f"{k.split('.')[-1]}-{_value_name(v)}" for k, v in cell.items())


def _value_name(v: Any) -> str:
    if v is None:  # e.g. train.tokenizer: null, the cell without vocabulary extension
        return "none"
    if isinstance(v, dict):
        return "custom"
    return Path(str(v)).stem if "/" in str(v) else str(v)


def cell_overrides(sweep: Sweep, cell: dict[str, Any]) -> list[str]:
    def text(v: Any) -> str:
        if v is None:  # `train.tokenizer=null`: the cell without vocabulary extension
            return "null"
        return yaml.safe_dump(v, default_flow_style=True).strip() if isinstance(v, (list, dict)) else str(v)

    over = [f"{k}={text(v)}" for k, v in cell.items()]
    return over + [f"run_dir={sweep.directory / cell_name(cell)}", f"name={cell_name(cell)}"]


def command(base: Path, overrides: list[str]) -> str:
    return shlex.join(["camelid", "run", str(base), *overrides])


def run_sweep(path: str | Path, print_only: bool = False) -> dict:
    """Run every cell in turn (or print the commands, one per cell, for a cluster launcher); write the report.
    Each cell runs in its own process, exactly as its printed command: its peak memory is its own, and a cell that
    crashes (even out of memory) is reported while the sweep goes on."""
    sweep, base = load_sweep(path)
    grid = cells(sweep)
    if print_only:
        for c in grid:
            print(command(base, cell_overrides(sweep, c)))
        return {}
    results = []
    for i, c in enumerate(grid, 1):
        over = cell_overrides(sweep, c)
        console.rule(f"[bold]cell {i}/{len(grid)}: {cell_name(c)}")
        row: dict[str, Any] = {"cell": cell_name(c), **{k: c[k] for k in c}, "command": command(base, over)}
        code, tail = run_cell(base, over)
        cell_dir = sweep.directory / cell_name(c)
        if code == 0:
            row.update(flatten(stage_summaries(cell_dir)))
            row["status"] = "done"
        else:
            row["status"] = "failed"
            last = [x for x in tail if x.strip()]
            row["error"] = (last[-1].strip() if last else f"exit code {code}")[:500]
            console.print(f"[red]cell {cell_name(c)} failed:[/] {row['error']}")
            cell_dir.mkdir(parents=True, exist_ok=True)
            write_text(cell_dir / "error.txt", "".join(tail))
        results.append(row)
        write_json(sweep.directory / "cells.json", results)  # after every cell: a killed sweep keeps what it had
    write_sweep_report(sweep, results)
    failed = [r["cell"] for r in results if r["status"] != "done"]
    if failed:  # the rest ran and is in the report; the exit code still says something went wrong
        raise CamelidError(f"{len(failed)} of {len(results)} cells failed ({', '.join(failed)}); see "
                           f"{sweep.directory / 'report' / 'report.md'}; rerun to retry them")
    return {"cells": results}


def run_cell(base: Path, overrides: list[str]) -> tuple[int, list[str]]:
    """`camelid run BASE OVERRIDES` in a child process; its stderr passes through; returns (exit code, last lines)."""
    env = dict(os.environ)
    if sys.stderr.isatty():
        env.setdefault("FORCE_COLOR", "1")  # keep the child's progress bars although its stderr is a pipe
    proc = subprocess.Popen([sys.executable, "-m", "camelid", "run", str(base), *overrides], stderr=subprocess.PIPE,
                            text=True, errors="replace", env=env)
    tail: collections.deque[str] = collections.deque(maxlen=200)
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        tail.append(line)
    return proc.wait(), list(tail)


def stage_summaries(cell_dir: Path) -> dict:
    """The summary of every finished stage of a cell's run directory (what `camelid run` returns)."""
    out = {}
    for f in sorted((cell_dir / ".stages").glob("*.json")):
        state = json.loads(f.read_text(encoding="utf-8"))
        if state.get("status") == "done":
            out[f.stem] = state.get("summary") or {}
    return out


def flatten(s: dict) -> dict:
    t, e = s.get("train") or {}, s.get("eval") or {}
    after, before, pair = e.get("after") or {}, e.get("before") or {}, e.get("pairwise") or {}
    return {"after_response_loss": after.get("response_loss"), "before_response_loss": before.get("response_loss"),
            "after_response_loss_per_char": after.get("response_loss_per_char"),
            "before_response_loss_per_char": before.get("response_loss_per_char"),
            "after_tokens_per_char": after.get("tokens_per_char"), "after_vocab_size": after.get("vocab_size"),
            "after_self_stop_rate": after.get("self_stop_rate"), "after_win_rate": pair.get("after_win_rate"),
            "after_single_score": after.get("single_score"), "train_time_s": t.get("train_time_s"),
            "peak_memory_mb": t.get("peak_memory_mb"), "trainable_params": t.get("trainable_params"),
            "tokens_seen": t.get("tokens_seen"), "final_loss": t.get("final_loss"),
            "eval_settings": {k: e.get(k) for k in ("questions", "questions_sha256", "max_tokens", "temperature")} | {
                "judge": pair.get("judge")}}


def _group(results: list[dict], axes: list[str]) -> dict[str, list[dict]]:
    """Cells that differ only by seed form one group (its spread is the seed variance)."""
    keys = [a for a in axes if a != "seed"]
    groups: dict[str, list[dict]] = {}
    for r in results:
        if r.get("status") == "done":
            groups.setdefault(" ".join(f"{k.split('.')[-1]}={r[k]}" for k in keys) or "all", []).append(r)
    return groups


def _mean_sd(vals: list) -> tuple[float | None, float]:
    v = [x for x in vals if isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None, 0.0
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0


def write_sweep_report(sweep: Sweep, results: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = sweep.directory / "report"
    out.mkdir(parents=True, exist_ok=True)
    axes = list(sweep.axes)
    groups = _group(results, axes)
    cols = [m for m in METRICS if any(r.get(m[0]) is not None for r in results)]
    table = Table(title=f"camelid sweep: {sweep.name} (full labels in the report)", box=box.SIMPLE_HEAD)
    term = [m for m in cols if m[0] != "tokens_seen"]  # the terminal is narrow: the report has every column
    show_status = any(r["status"] != "done" for r in results)
    table.add_column("cell", no_wrap=True)
    for h in ["status"] * show_status + [m[2] for m in term]:
        table.add_column(h, justify="right")
    md = [f"# camelid sweep: {sweep.name}", ""]
    settings = [r["eval_settings"] for r in results if r.get("eval_settings")]
    if settings:
        e = settings[0]
        md += [f"Every cell was evaluated alike: {e['questions']} held-out questions, answers up to {e['max_tokens']} "
               f"tokens at temperature {e['temperature']}, judge `{e['judge']}` against the untrained base model."
               + ("" if all(x == e for x in settings) else " (Warning: some cells were evaluated differently; "
                  "see summary.json.)"), ""]
        # rounded: CPU float reductions may differ in the last digits between processes
        base = {round(x, 3) for r in results if isinstance(x := r.get("before_response_loss"), float)}
        if len(base) == 1:
            md += [f"The untrained base model's held-out response loss: {_fmt(base.pop(), '.3f')}.", ""]
    if mixed_tokenizers(results):
        sizes = sorted({r["after_vocab_size"] for r in results if r.get("after_vocab_size")})
        md += [f"The cells use different tokenizers (vocabulary sizes {', '.join(f'{v:,}' for v in sizes)}"
               "): loss per token is not comparable between them (an extended vocabulary makes fewer, harder "
               "tokens for the same text); compare the loss per character. The charts use it.", ""]
    missing = [m[1] for m in METRICS if m[0].startswith("after_") and m not in cols]
    if missing and results:
        md += [f"Not shown: {', '.join(missing)}. No cell has a figure for them (a judge that gave no parseable "
               "verdict, or single grading off).", ""]
    md += ["| cell | status | " + " | ".join(m[1] for m in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for r in results:
        vals = [_fmt(r.get(k), spec) for k, _, _, _, spec in cols]
        table.add_row(r["cell"], *[r["status"]] * show_status, *[_fmt(r.get(m[0]), m[4]) for m in term])
        md.append(f"| {r['cell']} | {r['status']} | " + " | ".join(vals) + " |")
    console.print(table)
    md += ["", "## Best cell per metric (mean ± sd over seeds)", "", "| metric | best | mean ± sd |", "|---|---|---|"]
    best: dict[str, Any] = {}
    for key, label, _, higher, spec in cols:
        if key == "after_response_loss" and mixed_tokenizers(results):
            continue  # per token is not comparable across vocabularies
        scored = [(g, *_mean_sd([r.get(key) for r in rs])) for g, rs in groups.items()]
        scored = [s for s in scored if s[1] is not None]
        if not scored:
            continue
        g, m, sd = (max if higher else min)(scored, key=lambda s: s[1])
        tied = [s[0] for s in scored if s[1] == m]
        best[key] = {"group": g if len(tied) == 1 else tied, "mean": m, "sd": sd}
        who = g if len(tied) == 1 else ("all equal" if len(tied) == len(scored) else ", ".join(tied) + " (tied)")
        md.append(f"| {label} | {who} | {_fmt(m, spec)} ± {_fmt(sd, spec)} |")
    charts = []
    loss = "after_response_loss_per_char" if mixed_tokenizers(results) else "after_response_loss"
    for y_key, x_key, name in ((loss, "train_time_s", "loss_vs_time.png"),
                               ("after_win_rate", "train_time_s", "winrate_vs_time.png"),
                               (loss, "peak_memory_mb", "loss_vs_memory.png")):
        pts = [(g, *_mean_sd([r.get(x_key) for r in rs]), *_mean_sd([r.get(y_key) for r in rs]))
               for g, rs in groups.items()]
        pts = [p for p in pts if p[1] is not None and p[3] is not None]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for g, x, xsd, y, ysd in pts:
            ax.errorbar(x, y, xerr=xsd, yerr=ysd, fmt="o", capsize=4, label=g)
        ax.set_xlabel(dict((m[0], m[1]) for m in METRICS)[x_key])
        ax.set_ylabel(dict((m[0], m[1]) for m in METRICS)[y_key])
        ax.set_title("score vs cost (error bars: sd over seeds)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        charts.append(name)
    md += [""] + [f"![{c}]({c})\n" for c in charts]
    md += ["## Reproduce a cell", ""] + [f"- {r['cell']}: `{r['command']}`" for r in results]
    failed = [r for r in results if r["status"] != "done"]
    if failed:
        md += ["", "## Failed cells", ""] + [f"- {r['cell']}: {r.get('error')}" for r in failed]
    write_text(out / "report.md", "\n".join(md) + "\n")
    write_json(out / "summary.json", {"cells": results, "best": best, "axes": sweep.axes})
    console.print(f"sweep report: {out / 'report.md'}")
    return out


def mixed_tokenizers(results: list[dict]) -> bool:
    """Cells trained with different vocabularies: only per-character losses compare them."""
    return len({r.get("after_vocab_size") for r in results if r.get("after_vocab_size")}) > 1


def _fmt(x, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)
