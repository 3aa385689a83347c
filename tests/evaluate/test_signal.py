"""Measures with signal and no judge: ROUGE-L against rouge_score itself, bootstrap and paired-bootstrap intervals
that cover what they should, proportions with counts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from camelid.evaluate import signal


def test_rouge_l_is_rouge_scores_rouge_l_f1(shared_data):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rows = json.loads((shared_data / "alpaca_eval" / "example_outputs.json").read_text(encoding="utf-8"))[:200]
    for x, y in zip(rows, rows[1:] + rows[:1]):
        for pred, ref in ((x["output"], y["output"]), (x["instruction"], x["output"])):
            assert signal.rouge_l(pred, ref) == pytest.approx(scorer.score(ref, pred)["rougeL"].fmeasure, abs=1e-12)


def test_rouge_l_edge_cases():
    assert signal.rouge_l("", "anything") == 0.0
    assert signal.rouge_l("!!!", "...") == 0.0
    assert signal.rouge_l("the cat sat", "the cat sat") == 1.0
    assert 0 < signal.rouge_l("고양이가 앉았다", "고양이가 매트에 앉았다", "ko") < 1


def test_the_loss_interval_covers_the_ratio_of_sums_and_is_reproducible():
    rng = np.random.default_rng(1)
    tokens = rng.integers(20, 200, 40)
    sums = tokens * rng.normal(2.0, 0.3, 40)
    point = signal.ratio(sums, tokens)
    ci = signal.ratio_ci(sums, tokens, seed=3)
    assert ci[0] < point < ci[1]
    assert ci == signal.ratio_ci(sums, tokens, seed=3)
    assert signal.ratio_ci([], []) is None


def test_a_paired_interval_sees_a_small_shift_an_unpaired_one_cannot():
    """Questions differ a lot in difficulty; training lowers every loss a little. Pairing cancels the difficulty."""
    rng = np.random.default_rng(0)
    tokens = np.full(30, 100.0)
    difficulty = rng.uniform(1.0, 4.0, 30)
    before = tokens * difficulty
    after = tokens * (difficulty - 0.05 + rng.normal(0, 0.01, 30))
    paired = signal.paired_ratio_diff_ci(before, tokens, after, tokens, seed=0)
    assert paired[1] < 0  # the drop is seen
    lo_b, hi_b = signal.ratio_ci(before, tokens, seed=0)
    lo_a, hi_a = signal.ratio_ci(after, tokens, seed=1)
    assert lo_b < hi_a and lo_a < hi_b  # separately, the two intervals overlap
    assert signal.paired_ratio_diff_ci(before, tokens, after[:-1], tokens[:-1]) is None


def test_proportions_carry_their_counts_and_paired_changes_their_interval():
    p = signal.proportion([True] * 6 + [False] * 10)
    assert (p["k"], p["n"], p["rate"]) == (6, 16, 0.375)
    assert p["ci"][0] < 0.375 < p["ci"][1]
    assert signal.proportion([]) == {"k": 0, "n": 0, "rate": None, "ci": None}
    lo, hi = signal.paired_diff_ci([0] * 20, [1] * 18 + [0] * 2)
    assert 0.7 < lo <= hi <= 1.0
    ba = signal.before_after({"1": 0.1, "2": 0.2, "3": 0.3}, {"1": 0.4, "2": 0.5, "4": 0.9})
    assert ba["n"] == 2 and ba["change"] == pytest.approx(0.3)
