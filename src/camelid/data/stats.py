"""What is in a dataset: counts, length distributions, duplicates, and what generation rejected or found similar.

`stats` streams the file once and keeps only per-message lengths (a few bytes each) and 16-byte hashes for the
duplicate count. Two extras serve `camelid generate` output:
- a sidecar `<file>.rejected.jsonl` (`data.rejected.jsonl` beside `data.json`; `data.json.rejected.jsonl` is
  accepted too) whose rows carry a `reason`: counted by reason;
- Stanford's `most_similar_instructions` / `avg_similarity_score` fields on records: their distribution.
Lengths are whitespace words (Korean eojeol; Chinese text without spaces counts as few words: use tokens there),
and tokens when a model (anything with `count_tokens(text) -> int`) is given.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text

from camelid.core.io import Problem, atomic_write
from camelid.core.templates import user_text
from camelid.data.formats import detect_format, iter_conversations, iter_records

ROLES = ("user", "assistant")


def rejected_path(path: str | Path) -> Path | None:
    """The sidecar of rows `camelid generate` rejected for `path`, if one exists."""
    p = Path(path)
    for cand in (p.with_suffix(".rejected.jsonl"), Path(f"{p}.rejected.jsonl")):
        if cand.is_file() and cand != p:
            return cand
    return None


def distribution(values: Any) -> dict[str, float | int]:
    """count, min, mean, p50, p90, p99, max (nearest rank) of a sequence of numbers."""
    xs = sorted(values)
    if not xs:
        return {"count": 0}

    def pct(q: float) -> float | int:
        return xs[min(len(xs) - 1, max(0, round(q * len(xs)) - 1))]

    return {"count": len(xs), "min": xs[0], "mean": round(sum(xs) / len(xs), 4), "p50": pct(0.5), "p90": pct(0.9),
            "p99": pct(0.99), "max": xs[-1]}


class _Lengths:
    """Per-role lengths of one measure (words or tokens), compact arrays rather than lists of ints."""

    def __init__(self, count: Callable[[str], int]):
        self.count = count
        self.by_role = {r: array("l") for r in ROLES}
        self.per_conversation = array("l")

    def add(self, messages: list[dict]) -> None:
        total = 0
        for m in messages:
            n = self.count(user_text(m) if m["role"] == "user" else m["content"])
            total += n
            if m["role"] in self.by_role:
                self.by_role[m["role"]].append(n)
        self.per_conversation.append(total)

    def summary(self) -> dict:
        return {"user": distribution(self.by_role["user"]), "assistant": distribution(self.by_role["assistant"]),
                "conversation": distribution(self.per_conversation)}


def _words(text: str) -> int:
    return len(text.split())


def _rejected(path: Path) -> dict:
    reasons: Counter = Counter()
    for item in iter_records(path):
        if isinstance(item, Problem):
            if item.message != "file is empty":
                reasons["(unreadable line)"] += 1
            continue
        rec = item[2]
        reason = rec.get("reason") if isinstance(rec, dict) else None
        reasons["(no reason)" if reason is None else str(reason)] += 1
    return {"file": str(path), "total": sum(reasons.values()), "by_reason": dict(reasons.most_common())}


def _collect(path: str | Path, fmt: str | None, tokenizer: Any) -> tuple[dict, dict]:
    """One pass over the file: (summary, raw series for plotting)."""
    fmt = fmt or detect_format(path)
    count_tokens = getattr(tokenizer, "count_tokens", tokenizer)
    words = _Lengths(_words)
    tokens = _Lengths(count_tokens) if count_tokens else None
    turns = array("l")
    seen_conv: set[bytes] = set()
    seen_prompt: set[bytes] = set()
    avg_sim, max_sim = array("d"), array("d")
    records, last_index = 0, -1
    n = messages = system = empty_inputs = dup_conv = dup_prompt = 0
    for _line, index, conv in iter_conversations(path, fmt):
        n += 1
        if index != last_index:
            records, last_index = records + 1, index
        msgs = conv["messages"]
        messages += len(msgs)
        system += sum(m["role"] == "system" for m in msgs)
        users = [m for m in msgs if m["role"] == "user"]
        turns.append(len(users))
        if fmt in ("alpaca", "seed-tasks") and users and not users[0].get("input"):
            empty_inputs += 1
        words.add(msgs)
        if tokens:
            tokens.add(msgs)
        key = hashlib.blake2b(json.dumps(msgs, ensure_ascii=False, sort_keys=True).encode(), digest_size=16).digest()
        dup_conv += key in seen_conv
        seen_conv.add(key)
        if users:
            pkey = hashlib.blake2b(user_text(users[0]).strip().encode(), digest_size=16).digest()
            dup_prompt += pkey in seen_prompt
            seen_prompt.add(pkey)
        score = conv.get("avg_similarity_score")
        if isinstance(score, (int, float)) and not isinstance(score, bool):
            avg_sim.append(float(score))
        similar = conv.get("most_similar_instructions")
        if isinstance(similar, dict):
            vals = [v for v in similar.values() if isinstance(v, (int, float))]
            if vals:
                max_sim.append(float(max(vals)))
    out: dict[str, Any] = {
        "file": str(path), "format": fmt, "records": records, "conversations": n, "messages": messages,
        "turns": sum(turns), "system_messages": system,
        "empty_inputs": empty_inputs if fmt in ("alpaca", "seed-tasks") else None,
        "turns_per_conversation": distribution(turns),
        "words": words.summary(),
        "tokens": tokens.summary() if tokens else None,
        "duplicates": {"conversations": dup_conv, "prompts": dup_prompt},
        "similarity": None, "rejected": None,
    }
    if avg_sim or max_sim:
        out["similarity"] = {"records": max(len(avg_sim), len(max_sim)), "avg_similarity_score": distribution(avg_sim),
                             "max_similarity": distribution(max_sim)}
    side = rejected_path(path)
    if side:
        out["rejected"] = _rejected(side)
    series = {"words": words, "tokens": tokens, "turns": turns, "avg_sim": avg_sim, "max_sim": max_sim}
    return out, series


def stats(path: str | Path, fmt: str | None = None, tokenizer: Any = None, plot: str | Path | None = None) -> dict:
    """Counts (records, conversations, messages, turns, empty inputs), length distributions in words (and tokens
    when `tokenizer` is a Model or any object with `count_tokens`, or a callable text -> int), exact-duplicate
    conversations and prompts, the similarity distribution and the rejected-row reasons of generated data.
    With `plot`, histograms are written to that PNG (atomically)."""
    out, series = _collect(path, fmt, tokenizer)
    if plot:
        write_plot(out, series, plot)
    return out


def write_plot(summary: dict, series: dict, png: str | Path) -> None:
    """Histograms of the series `stats` collected, as one PNG (matplotlib's Agg canvas: no display, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels: list[tuple[str, Callable]] = []

    def hist(title: str, values: Any, xlabel: str) -> None:
        if len(values):
            panels.append((title, lambda ax: (ax.hist(values, bins=50), ax.set_xlabel(xlabel))))

    for measure in ("words", "tokens"):
        lengths = series[measure]
        if lengths is not None:
            hist(f"user prompt length ({measure})", lengths.by_role["user"], measure)
            hist(f"assistant answer length ({measure})", lengths.by_role["assistant"], measure)
    if len(series["turns"]) and max(series["turns"]) > 1:
        hist("user turns per conversation", series["turns"], "turns")
    hist("avg_similarity_score", series["avg_sim"], "ROUGE-L")
    hist("max similarity to an earlier instruction", series["max_sim"], "ROUGE-L")
    rejected = summary.get("rejected")
    if rejected and rejected["by_reason"]:
        reasons = list(rejected["by_reason"].items())[:15]
        panels.append(("rejected rows by reason", lambda ax: (
            ax.barh([r for r, _ in reasons][::-1], [c for _, c in reasons][::-1]), ax.set_xlabel("rows"))))
    cols = 2
    rows = max(1, (len(panels) + cols - 1) // cols)
    fig = Figure(figsize=(6 * cols, 3.2 * rows))
    FigureCanvasAgg(fig)
    for i, (title, draw) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        draw(ax)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"{Path(summary['file']).name}: {summary['conversations']} conversations ({summary['format']})")
    fig.tight_layout()
    with atomic_write(png, "wb") as f:
        fig.savefig(f, format="png", dpi=100)


def show(path: str | Path, n: int = 5, fmt: str | None = None, console: Any = None) -> int:
    """Pretty-print the first `n` conversations of any format (rich); returns how many were shown."""
    console = console or Console()
    colors = {"system": "magenta", "user": "cyan", "assistant": "green"}
    shown = 0
    fmt = fmt or detect_format(path)
    if n <= 0:
        return 0
    for line, index, conv in iter_conversations(path, fmt):
        parts = []
        for m in conv["messages"]:
            parts.append(Text(m["role"], style=f"bold {colors.get(m['role'], 'white')}"))
            parts.append(Text(m["content"]))
            if m.get("input"):
                parts.append(Text("input:", style="dim"))
                parts.append(Text(m["input"]))
        extras = {k: v for k, v in conv.items() if k not in ("id", "messages")}
        if extras:
            parts.append(Text(json.dumps(extras, ensure_ascii=False)[:500], style="dim"))
        where = f"line {line}" if line is not None else f"record {index}"
        title = f"{conv['id'] or f'#{shown}'}  ({where})"
        console.print(Panel(Group(*parts), title=Text(title), title_align="left", subtitle=fmt, subtitle_align="right"))
        shown += 1
        if shown >= n:  # stop before reading (and checking) the next record
            break
    return shown
