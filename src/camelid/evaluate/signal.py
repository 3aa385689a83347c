"""Before -> after measures that carry signal without a strong judge, each with a seeded bootstrap interval.

- held-out response loss: total loss over total reference-answer tokens (the training objective, on questions the
  student never saw); its interval resamples questions, and the before -> after change uses the same resamples for
  both sides (a paired bootstrap), so question difficulty cancels out
- ROUGE-L F1 of each answer against the held-out reference (Self-Instruct's metric on its evaluation set),
  rouge_score's formula on camelid's tokenizers (rouge_score's own for English)
- a proportion with counts (answers that stop by themselves, answers that pass a check) and its interval
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from rapidfuzz.distance import LCSseq

from camelid.data.dedup import tokenizer

N_BOOT = 2000


def rouge_l(prediction: str, reference: str, lang: str = "en") -> float:
    """ROUGE-L F1 (rouge_score's fmeasure: LCS over tokens, no stemmer); 0 when either side has no tokens."""
    tok = tokenizer(lang)
    p, r = tok(prediction), tok(reference)
    if not p or not r:
        return 0.0
    lcs = LCSseq.similarity(p, r)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _interval(stats: np.ndarray, alpha: float = 0.05) -> list[float] | None:
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return None
    return [float(np.quantile(stats, alpha / 2)), float(np.quantile(stats, 1 - alpha / 2))]


def ratio(num: Sequence[float], den: Sequence[float]) -> float | None:
    d = float(np.sum(den))
    return float(np.sum(num)) / d if d else None


def ratio_ci(num: Sequence[float], den: Sequence[float], n_boot: int = N_BOOT, seed: int = 0) -> list[float] | None:
    """Interval of sum(num) / sum(den), resampling the items (e.g. loss sums and token counts per question)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    if not len(num):
        return None
    idx = _resamples(len(num), n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _interval(num[idx].sum(1) / den[idx].sum(1))


def paired_ratio_diff_ci(num_a: Sequence[float], den_a: Sequence[float], num_b: Sequence[float],
                         den_b: Sequence[float], n_boot: int = N_BOOT, seed: int = 0) -> list[float] | None:
    """Interval of ratio(b) - ratio(a) when item i of a and of b are the same question (paired resamples)."""
    arrs = [np.asarray(x, float) for x in (num_a, den_a, num_b, den_b)]
    if not len(arrs[0]) or len({len(a) for a in arrs}) != 1:
        return None
    idx = _resamples(len(arrs[0]), n_boot, seed)
    na, da, nb, db = (a[idx].sum(1) for a in arrs)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _interval(nb / db - na / da)


def mean_ci(values: Sequence[float], n_boot: int = N_BOOT, seed: int = 0) -> list[float] | None:
    v = np.asarray(values, float)
    if not len(v):
        return None
    return _interval(v[_resamples(len(v), n_boot, seed)].mean(1))


def paired_diff_ci(a: Sequence[float], b: Sequence[float], n_boot: int = N_BOOT, seed: int = 0) -> list[float] | None:
    """Interval of mean(b) - mean(a) over paired items (a 0/1 list gives the change of a proportion)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if not len(a) or len(a) != len(b):
        return None
    idx = _resamples(len(a), n_boot, seed)
    return _interval(b[idx].mean(1) - a[idx].mean(1))


def proportion(hits: Sequence[bool], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """{k, n, rate, ci}: a count, its share and the share's bootstrap interval."""
    v = [bool(h) for h in hits]
    k, n = sum(v), len(v)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci": mean_ci(v, n_boot, seed) if n else None}


def before_after(before: dict[str, float], after: dict[str, float], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Per-question values keyed by question id -> {before, after, before_ci, after_ci, change, change_ci, n} over
    the questions both sides have."""
    ids = sorted(set(before) & set(after), key=str)
    a = [before[i] for i in ids]
    b = [after[i] for i in ids]
    if not ids:
        return {"n": 0, "before": None, "after": None, "change": None}
    return {"n": len(ids), "before": float(np.mean(a)), "before_ci": mean_ci(a, n_boot, seed),
            "after": float(np.mean(b)), "after_ci": mean_ci(b, n_boot, seed),
            "change": float(np.mean(b) - np.mean(a)), "change_ci": paired_diff_ci(a, b, n_boot, seed)}
