import numpy as np

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
