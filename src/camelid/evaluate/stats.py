"""The numbers an evaluation reports, each with a seeded bootstrap confidence interval.

- single grading: mean score per model and category; Vicuna's relative total score (model total / baseline total
  over the questions both were scored on)
- pairwise: strict win / tie / loss shares, win rate with ties as half a win, and the length-controlled win rate
  of AlpacaEval's `length_controlled_minimal` GLM (see length_controlled_win_rate)
- arena votes: Bradley-Terry ratings on the Elo scale (logistic regression on the battles, ties as half a win)
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Sequence

import numpy as np

ELO_SCALE = 400 / math.log(10)
ELO_BASE = 1000.0


def bootstrap_ci(values: Sequence, stat: Callable[[list], float], n: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of `stat` over `n` resamples (with replacement) of `values`; seeded, so reproducible."""
    vals = list(values)
    if not vals:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(vals), size=(n, len(vals)))
    stats = np.array([stat([vals[i] for i in row]) for row in idx], dtype=float)
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return (float("nan"), float("nan"))
    return (float(np.quantile(stats, alpha / 2)), float(np.quantile(stats, 1 - alpha / 2)))


def logistic_fit(X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, l2: float = 1e-3,
                 penalize: np.ndarray | None = None, iters: int = 100) -> np.ndarray:
    """Weighted logistic regression by Newton's method (y may be 0..1: a tie is y=0.5). A small L2 penalty keeps
    the fit finite when the data separate perfectly (a model that wins every battle)."""
    X = np.asarray(X, float)
    y = np.asarray(y, float)
    w = np.ones(len(y)) if w is None else np.asarray(w, float)
    pen = np.full(X.shape[1], l2) if penalize is None else l2 * np.asarray(penalize, float)
    beta = np.zeros(X.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(X @ beta, -30, 30)))
        grad = X.T @ (w * (p - y)) + pen * beta
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + np.diag(pen + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < 1e-9:
            break
    return beta


def _order(r: dict) -> tuple[str, int]:
    return (str(r.get("question_id")), int(r.get("turn") or 1))


# ---------------------------------------------------------------------------------------------- pairwise

OUTCOME = {"model_1": 1.0, "tie": 0.5, "model_2": 0.0}


def win_rate(outcomes: Sequence[float]) -> float:
    return float(np.mean(outcomes)) if len(outcomes) else float("nan")


def length_controlled_win_rate(outcomes: Sequence[float], len_1: Sequence[float], len_2: Sequence[float]) -> float:
    """P(model_1 preferred) at equal length: fit sigmoid(b0 + b1 * tanh(dlen / sd)) and report sigmoid(b0).

    This is the GLM of AlpacaEval's `length_controlled_minimal` (formula `np.tanh(std_delta_len) +
    not_gamed_baseline - 1`, sd with ddof=1, a tie as half a preference), fitted by maximum likelihood (a 1e-2 L2
    penalty on the slope only keeps separable data finite): within 2e-4 of AlpacaEval's GLM fitted without penalty
    (tests/evaluate/test_stats.py). AlpacaEval fits it with a 5-fold cross-validated L1 penalty: the same figure on
    large sets (within 1e-3 on 300-805 instructions there), but on some sets of 100-200 its penalty shrinks the
    figure to exactly 0.5. It is not AlpacaEval 2.0's leaderboard LC (`length_controlled_v1`), which adds an
    instruction-difficulty term and regularizes toward its gamed baselines."""
    y = np.asarray(outcomes, float)
    if not len(y):
        return float("nan")
    d = np.asarray(len_1, float) - np.asarray(len_2, float)
    sd = d.std(ddof=1) if len(d) > 1 else 0.0  # pandas .std(), as AlpacaEval standardizes
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    beta = logistic_fit(np.column_stack([np.ones_like(x), x]), y, l2=1e-2, penalize=np.array([0.0, 1.0]))
    return float(1 / (1 + math.exp(-beta[0])))


def pairwise_summary(rows: list[dict], n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Per (model_1, model_2): win/tie/loss/error counts; the strict shares `win_share`, `tie_rate`, `loss_rate`
    (summing to 1); `win_rate` (a tie half a win) and `lc_win_rate` of model_1; each with a bootstrap CI. Rows are
    combined judgments (`winner` in model_1 | model_2 | tie | error)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in sorted(rows, key=_order):  # judgments finish in any order: sort so the bootstrap is reproducible
        groups[(r["model_1"], r["model_2"])].append(r)
    out = []
    for (m1, m2), rs in groups.items():
        ok = [r for r in rs if r.get("winner") in OUTCOME]
        y = [OUTCOME[r["winner"]] for r in ok]
        l1 = [float(r.get("length_1") or 0) for r in ok]
        l2 = [float(r.get("length_2") or 0) for r in ok]
        trip = list(zip(y, l1, l2))
        res = {"model_1": m1, "model_2": m2, "n": len(ok), "errors": len(rs) - len(ok),
               "win": sum(v == 1.0 for v in y), "tie": sum(v == 0.5 for v in y), "loss": sum(v == 0.0 for v in y),
               "swap_disagreements": sum(1 for r in ok if r.get("g1_winner") != r.get("g2_winner"))}
        # strict shares of the questions (the report's win/tie/loss bar: they sum to 1); FastChat's show_result
        # calls the strict share `win_rate` and the tie-half one `win_rate_adjusted`
        for key, name, val in (("win_share", "win", 1.0), ("tie_rate", "tie", 0.5), ("loss_rate", "loss", 0.0)):
            res[key] = res[name] / len(y) if y else float("nan")
            res[f"{key}_ci"] = bootstrap_ci(y, lambda s, v=val: sum(x == v for x in s) / len(s), n_boot, seed)
        res["win_rate"] = win_rate(y)  # a tie counts half (AlpacaEval's win_rate, FastChat's win_rate_adjusted)
        res["win_rate_ci"] = bootstrap_ci(y, win_rate, n_boot, seed)
        res["lc_win_rate"] = length_controlled_win_rate(y, l1, l2)
        res["lc_win_rate_ci"] = bootstrap_ci(
            trip, lambda s: length_controlled_win_rate([t[0] for t in s], [t[1] for t in s], [t[2] for t in s]),
            min(n_boot, 300), seed)
        res["mean_length_1"] = float(np.mean(l1)) if l1 else float("nan")
        res["mean_length_2"] = float(np.mean(l2)) if l2 else float("nan")
        out.append(res)
    return out


# ---------------------------------------------------------------------------------------------- single grading


def single_summary(rows: list[dict], n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Per model: mean score with a bootstrap CI, per-category means, and how many replies had no parseable score."""
    by_model: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=_order):
        by_model[r["model"]].append(r)
    out = []
    for m, rs in by_model.items():
        scores = [float(r["score"]) for r in rs if r.get("score") is not None]
        cats: dict[str, list[float]] = defaultdict(list)
        turns: dict[int, list[float]] = defaultdict(list)
        for r in rs:
            if r.get("score") is not None:
                cats[r.get("category") or "general"].append(float(r["score"]))
                turns[int(r.get("turn") or 1)].append(float(r["score"]))
        out.append({"model": m, "n": len(rs), "scored": len(scores), "unparsed": len(rs) - len(scores),
                    "mean": float(np.mean(scores)) if scores else float("nan"),
                    "mean_ci": bootstrap_ci(scores, lambda s: float(np.mean(s)), n_boot, seed),
                    "by_category": {c: float(np.mean(v)) for c, v in sorted(cats.items())},
                    "by_turn": {t: float(np.mean(v)) for t, v in sorted(turns.items())}})
    return out


def relative_scores(rows: list[dict], baseline: str) -> dict[str, float]:
    """Vicuna's relative total score: sum of a model's scores / sum of the baseline's, over the (question, turn)
    pairs both were scored on."""
    scores: dict[str, dict[tuple, float]] = defaultdict(dict)
    for r in rows:
        if r.get("score") is not None:
            scores[r["model"]][(str(r["question_id"]), r.get("turn") or 1)] = float(r["score"])
    base = scores.get(baseline, {})
    out = {}
    for m, s in scores.items():
        common = set(s) & set(base)
        total_b = sum(base[k] for k in common)
        out[m] = sum(s[k] for k in common) / total_b if total_b else float("nan")
    return out


# ---------------------------------------------------------------------------------------------- arena


def bradley_terry(battles: Sequence[tuple[str, str, float]], models: Sequence[str] | None = None) -> dict[str, float]:
    """Bradley-Terry ratings on the Elo scale (mean 1000): P(a beats b) = 1 / (1 + 10^((R_b - R_a) / 400)).
    `battles` are (model_a, model_b, outcome for a: 1 win, 0.5 tie, 0 loss)."""
    names = sorted(set(models or []) | {m for a, b, _ in battles for m in (a, b)})
    if not names:
        return {}
    if not battles:
        return {m: ELO_BASE for m in names}
    ix = {m: i for i, m in enumerate(names)}
    X = np.zeros((len(battles), len(names)))
    for k, (a, b, _) in enumerate(battles):
        X[k, ix[a]] += 1.0
        X[k, ix[b]] -= 1.0
    y = np.array([o for _, _, o in battles], float)
    beta = logistic_fit(X, y, l2=1e-2)
    beta -= beta.mean()
    return {m: float(ELO_BASE + ELO_SCALE * beta[ix[m]]) for m in names}


def arena_summary(battles: list[tuple[str, str, float]], n_boot: int = 500, seed: int = 0) -> list[dict]:
    """Per model: battles, wins/ties/losses, win rate (ties half) and Bradley-Terry Elo, each with a bootstrap CI."""
    models = sorted({m for a, b, _ in battles for m in (a, b)})
    elo = bradley_terry(battles, models)
    rng = np.random.default_rng(seed)
    boots: dict[str, list[float]] = defaultdict(list)
    wr_boots: dict[str, list[float]] = defaultdict(list)
    for _ in range(n_boot if battles else 0):
        sample = [battles[i] for i in rng.integers(0, len(battles), len(battles))]
        for m, r in bradley_terry(sample, models).items():
            boots[m].append(r)
        for m, v in _win_rates(sample).items():
            wr_boots[m].append(v)
    out = []
    rates = _win_rates(battles)
    for m in models:
        mine = [(o if a == m else 1 - o) for a, b, o in battles if m in (a, b)]
        out.append({"model": m, "battles": len(mine), "wins": sum(v == 1 for v in mine),
                    "ties": sum(v == 0.5 for v in mine), "losses": sum(v == 0 for v in mine),
                    "win_rate": rates.get(m, float("nan")), "win_rate_ci": _pct(wr_boots[m]),
                    "elo": elo[m], "elo_ci": _pct(boots[m])})
    return sorted(out, key=lambda r: -r["elo"])


def _win_rates(battles: Sequence[tuple[str, str, float]]) -> dict[str, float]:
    tot: dict[str, list[float]] = defaultdict(list)
    for a, b, o in battles:
        tot[a].append(o)
        tot[b].append(1 - o)
    return {m: float(np.mean(v)) for m, v in tot.items()}


def _pct(v: list[float]) -> tuple[float, float]:
    return (float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))) if v else (float("nan"), float("nan"))
