"""The run report's rows: every cell says something (figures with intervals, or in words why there are none)."""

from __future__ import annotations

from camelid.pipeline.report import summary_rows

EVAL = {"questions": 16,
        "before": {"response_loss": 2.489, "response_loss_ci": [2.3, 2.7], "self_stop_rate": 0.5,
                   "mean_answer_words": 60.0},
        "after": {"response_loss": 2.448, "response_loss_ci": [2.25, 2.65], "self_stop_rate": 0.5,
                  "mean_answer_words": 55.0},
        "response_loss_change": {"change": -0.041, "ci": [-0.08, -0.01], "n": 16},
        "rouge_l": {"n": 16, "before": 0.2, "before_ci": [0.15, 0.25], "after": 0.22, "after_ci": [0.17, 0.27],
                    "change": 0.02, "change_ci": [-0.01, 0.05]},
        "self_stop": {"before": {"k": 8, "n": 16, "rate": 0.5, "ci": [0.25, 0.75]},
                      "after": {"k": 8, "n": 16, "rate": 0.5, "ci": [0.25, 0.75]}, "change_ci": [-0.2, 0.2]}}
GENERATE = {"kept": 40, "candidates": 91, "rejected": {"numbering_leak": 3, "near_duplicate": 48}, "tokens": 1000,
            "seconds": 10.0}


def _cells(rows):
    return [c for r in rows for c in r]


def test_a_judge_without_verdicts_is_explained_in_words_with_the_way_to_a_real_judge():
    rows = summary_rows({"generate": GENERATE,
                         "eval": {**EVAL, "pairwise": {"win": 0, "tie": 0, "loss": 0, "errors": 16, "n": 0,
                                                       "judge": "embedded"}}})
    judge = [v for s, m, v in rows if m == "judge"]
    assert judge and "no parseable verdict" in judge[0] and "16" in judge[0] and "openai:NAME" in judge[0]
    assert all(c.strip() and c.strip("–-— ()%") for c in _cells(rows))
    text = "\n".join(" | ".join(r) for r in rows)
    assert "2.489 [2.300, 2.700] → 2.448 [2.250, 2.650]" in text
    assert "-0.041 [-0.080, -0.010]" in text and "8/16 (50%) [25%, 75%]" in text
    assert "numbering_leak (the instruction starts with" in text


def test_missing_figures_and_a_skipped_judge_read_as_words():
    ev = {"questions": 2, "before": {"response_loss": None}, "after": {"response_loss": None}}
    rows = summary_rows({"eval": ev})
    assert all(c.strip() and c.strip("–-— ()%") for c in _cells(rows))
    assert any("not run (eval.judge: none)" in v for _, _, v in rows)
    assert any("not measured" in v for _, _, v in rows)


def test_a_behaviour_check_shows_counts_intervals_and_the_paired_change():
    ev = {**EVAL, "check": {"check": "mentions “Camelid”", "before": {"k": 0, "n": 40, "rate": 0.0, "ci": [0, 0]},
                            "after": {"k": 30, "n": 40, "rate": 0.75, "ci": [0.6, 0.88]}, "change": 0.75,
                            "change_ci": [0.6, 0.88]}}
    text = "\n".join(" | ".join(r) for r in summary_rows({"eval": ev}))
    assert "0/40 (0%) [0%, 0%] → 30/40 (75%) [60%, 88%]" in text and "+75 points [+60, +88]" in text


def test_runs_with_different_tokenizers_show_loss_per_character_its_paired_change_and_tokens_per_character():
    ev = {**EVAL,
          "before": {**EVAL["before"], "response_loss_per_char": 1.9, "response_loss_per_char_ci": [1.7, 2.1],
                     "tokens_per_char": 2.31},
          "after": {**EVAL["after"], "response_loss_per_char": 1.2, "response_loss_per_char_ci": [1.05, 1.35],
                    "tokens_per_char": 0.62},
          "response_loss_per_char_change": {"change": -0.7, "ci": [-0.85, -0.55], "n": 16},
          "pairwise": {"win": 5, "tie": 2, "loss": 1, "errors": 0, "n": 8, "after_win_rate": 0.75,
                       "after_win_rate_ci": [0.5, 1.0], "judge": "embedded", "judge_prompts": "camelid",
                       "judge_lang": "ko"}}
    rows = summary_rows({"eval": ev})
    by = {m: v for _, m, v in rows}
    assert by["held-out response loss per character, 95% CI (before → after)"] == \
        "1.900 [1.700, 2.100] → 1.200 [1.050, 1.350]"
    assert by["response loss per character change (paired 95% CI; lower is better)"] == "-0.700 [-0.850, -0.550]"
    assert by["tokens per character of the held-out answers (before → after)"] == "2.31 → 0.62"
    assert by["judge (camelid prompts, ko): after vs before (win/tie/loss)"] == "5/2/1"
