import json
import warnings

import numpy as np
import pytest

from camelid.evaluate.stats import (arena_summary, bootstrap_ci, bradley_terry, length_controlled_win_rate,
                                    pairwise_summary, relative_scores)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    vals = [1.0] * 30 + [0.0] * 10
    a = bootstrap_ci(vals, np.mean, seed=3)
    assert a == bootstrap_ci(vals, np.mean, seed=3) and a[0] < 0.75 < a[1]
    cont = list(np.random.default_rng(0).normal(size=50))
    assert bootstrap_ci(cont, np.mean, seed=4) != bootstrap_ci(cont, np.mean, seed=5)


def test_length_controlled_win_rate_removes_a_pure_length_preference():
    rng = np.random.default_rng(0)
    l1 = rng.integers(100, 2000, 400).astype(float)
    l2 = np.where(rng.random(400) < 0.8, l1 * 0.5, l1 * 1.5)  # model_1 is the longer one 80% of the time
    y = [1.0 if (a > b) == (rng.random() < 0.9) else 0.0 for a, b in zip(l1, l2)]  # the judge likes length
    raw = float(np.mean(y))
    lc = length_controlled_win_rate(y, l1, l2)
    assert raw > 0.7 and 0.35 < lc < 0.65


def test_pairwise_summary_counts_wins_ties_losses_and_errors():
    rows = ([{"model_1": "a", "model_2": "b", "winner": "model_1", "g1_winner": "model_1", "g2_winner": "model_1",
              "length_1": 10, "length_2": 10}] * 6
            + [{"model_1": "a", "model_2": "b", "winner": "tie", "g1_winner": "model_1", "g2_winner": "model_2"}] * 2
            + [{"model_1": "a", "model_2": "b", "winner": "model_2", "g1_winner": "model_2", "g2_winner": "model_2"}]
            + [{"model_1": "a", "model_2": "b", "winner": "error", "g1_winner": "error", "g2_winner": "model_1"}])
    s = pairwise_summary(rows, n_boot=200)[0]
    assert (s["win"], s["tie"], s["loss"], s["errors"], s["n"], s["swap_disagreements"]) == (6, 2, 1, 1, 9, 2)
    assert abs(s["win_rate"] - 7 / 9) < 1e-9 and s["win_rate_ci"][0] <= s["win_rate"] <= s["win_rate_ci"][1]


def test_bradley_terry_orders_models_by_strength_with_confidence_intervals():
    rng = np.random.default_rng(1)
    battles = []
    for a, b, p in (("strong", "mid", 0.8), ("mid", "weak", 0.8), ("strong", "weak", 0.95)):
        battles += [(a, b, float(rng.random() < p)) for _ in range(60)]
    battles += [("strong", "mid", 0.5)] * 5
    elo = bradley_terry(battles)
    assert elo["strong"] > elo["mid"] > elo["weak"] and abs(np.mean(list(elo.values())) - 1000) < 1e-6
    # 80% is about 240 Elo points under Bradley-Terry
    assert 150 < elo["strong"] - elo["mid"] < 350
    summ = arena_summary(battles, n_boot=100)
    assert [s["model"] for s in summ] == ["strong", "mid", "weak"]
    assert all(s["elo_ci"][0] <= s["elo"] <= s["elo_ci"][1] for s in summ)


def test_vicuna_relative_score_is_total_over_baseline_total_on_common_turns():
    rows = [{"model": "m", "question_id": 1, "turn": 1, "score": 6}, {"model": "m", "question_id": 2, "turn": 1,
            "score": 4}, {"model": "base", "question_id": 1, "turn": 1, "score": 8},
            {"model": "base", "question_id": 2, "turn": 1, "score": 8},
            {"model": "m", "question_id": 3, "turn": 1, "score": 10}]  # no baseline score: left out
    assert relative_scores(rows, "base") == {"m": 10 / 16, "base": 1.0}


@pytest.mark.parametrize("n, bias, cv_agrees", [(805, -0.6, True), (805, 0.6, True), (300, 0.3, True),
                                                (200, -0.3, False), (100, 0.0, False)])
def test_length_controlled_win_rate_is_alpaca_evals_length_controlled_minimal_glm(shared_data, n, bias, cv_agrees):
    """The GLM of AlpacaEval's `length_controlled_minimal` (intercept + tanh of the standardized length difference,
    read at zero difference), fitted by maximum likelihood. AlpacaEval fits it with a cross-validated L1 penalty:
    the same figure on large sets, and on some small ones the penalty shrinks it to exactly 50%."""
    pytest.importorskip("sklearn")
    pytest.importorskip("patsy")
    import pandas as pd

    from . import alpaca_eval_glm as ae

    data = json.loads((shared_data / "alpaca_eval" / "example_outputs.json").read_text())
    rng = np.random.default_rng(n + int(10 * bias))
    idx = rng.choice(len(data), n, replace=False)
    base = [data[i]["output"] for i in idx]
    model = [((b * 3)[: int(len(b) * m)] or "x") for b, m in zip(base, rng.choice([0.5, 1.5, 2.5], n))]  # longer
    d = np.array([len(m) - len(b) for m, b in zip(model, base)], float)
    p = 1 / (1 + np.exp(-(bias + 1.2 * np.tanh(d / d.std()))))  # a judge that likes length
    y = np.where(rng.random(n) < p, 1.0, 0.0)
    y[rng.random(n) < 0.1] = 0.5  # some ties
    winner = {1.0: "model_1", 0.5: "tie", 0.0: "model_2"}
    rows = [{"model_1": "model", "model_2": "baseline", "question_id": i, "winner": winner[v], "length_1": len(m),
             "length_2": len(b)} for i, (v, m, b) in enumerate(zip(y, model, base))]
    ours = pairwise_summary(rows, n_boot=1)[0]["lc_win_rate"]
    # AlpacaEval: output_1 is the baseline, output_2 the model; preference 2 = the model wins, 1.5 = a draw
    df = pd.DataFrame({"output_1": base, "output_2": model, "preference": 1 + y, "index": np.arange(n)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's deprecation notes about AlpacaEval's arguments
        cv = ae.get_length_controlled_winrate(df, "length_controlled_minimal")
        ml = ae.get_length_controlled_winrate(df, "length_controlled_minimal", glm_info=dict(
            ae.GLM_INFO["length_controlled_minimal"], kwargs={"n_splits": 0, "C": 1e8}))  # no penalty to speak of
    assert abs(ours - ml) < 2e-4  # the same GLM
    assert abs(float(np.mean(y)) - ml) > 0.02  # and the length control moved the figure: the check has teeth
    if cv_agrees:
        assert abs(ours - cv) < 1e-3
    else:
        assert cv == 0.5 and abs(ours - 0.5) > 0.02
