"""Context distillation end to end: the shipped recipe, shrunken (a few instructions, a few steps), on the embedded
model: the teacher's answers under the hidden context are checked and kept, the student trains on them without the
context, and the eval measures the behaviour before and after with counts and intervals."""

from __future__ import annotations

from pathlib import Path

import pytest

from camelid.core.io import CamelidError, read_json, read_jsonl
from camelid.pipeline.recipe import load_recipe
from camelid.pipeline.run import run_recipe

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "distill.yaml"


def test_the_distill_recipe_is_valid_and_refuses_a_bad_check(tmp_path):
    r = load_recipe(RECIPE)
    assert r.distill["check"] == {"starts_with": "Camelid here"} and r.eval.judge == "none"
    with pytest.raises(CamelidError, match="distill"):
        load_recipe(RECIPE, ["distill.check={bullets: 0}"])
    with pytest.raises(CamelidError, match="distill"):
        load_recipe(RECIPE, ["distill.no_such_field=1"])
    with pytest.raises(CamelidError, match="check"):
        load_recipe(RECIPE, ["eval.check={contains: a, bullets: 2}"])


@pytest.mark.slow
def test_a_shrunken_distill_run_teaches_the_hidden_behaviour(tmp_path):
    recipe = load_recipe(RECIPE, [f"run_dir={tmp_path / 'run'}", "distill.limit=6", "distill.max_tokens=40",
                                  "eval.heldout=4", "eval.max_tokens=6", "train.max_steps=4",
                                  "train.micro_batch_size=4", "train.global_batch_size=4"])
    summaries = run_recipe(recipe)
    run = tmp_path / "run"
    g = summaries["generate"]
    rows = [r for _, r in read_jsonl(run / "generate" / "data.jsonl")]
    assert g["kept"] == len(rows) > 0 and g["candidates"] == 12
    assert all(r["output"].startswith("Camelid here") and "Camelid here" not in r["instruction"] for r in rows)
    rejected = [r for _, r in read_jsonl(run / "generate" / "data.rejected.jsonl")] \
        if (run / "generate" / "data.rejected.jsonl").exists() else []
    assert len(rejected) == sum(g["rejected"].values()) == 12 - len(rows)
    assert g["teacher_check"]["n"] == 12
    m = read_json(run / "eval" / "metrics.json")
    chk = m["check"]
    assert chk["before"]["n"] == chk["after"]["n"] == 4 and chk["before"]["k"] == 0
    assert chk["after"]["k"] >= chk["before"]["k"] and len(chk["change_ci"]) == 2  # the full recipe: README
    assert m["response_loss_change"]["ci"] is not None and m["rouge_l"]["n"] == 4
    report = (run / "report" / "report.md").read_text()
    assert "behaviour check: answer starts with “Camelid here”" in report and "not run (eval.judge: none)" in report
    assert "| – |" not in report and "||" not in report
