"""Every shipped recipe loads and each section is valid for the command it drives (litgpt's config-hub test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from camelid.core.io import CamelidError
from camelid.generate.distill import DistillConfig
from camelid.generate.generator import GenerateConfig
from camelid.models import parse_spec
from camelid.pipeline.recipe import load_recipe
from camelid.train.config import load_config

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_the_four_documented_recipes_are_shipped():
    names = {p.stem for p in RECIPES}
    assert {"quickstart", "alpaca", "vicuna", "kollama2"} <= names


@pytest.mark.parametrize("path", [p for p in RECIPES if not p.stem.startswith("sweep")], ids=lambda p: p.stem)
def test_shipped_recipe_matches_the_commands_it_drives(path):
    recipe = load_recipe(path)
    staged = recipe.staged()
    if staged is not None:  # a staged train section: each stage is a `camelid train` config
        for stage in staged.stages:
            assert Path(stage.config.output_dir).parent == recipe.directory / "train"
            assert all(Path(d).is_file() for d in stage.config.data if "generate" not in Path(d).parts)
        parse_spec(staged.stages[0].config.model)
        assert staged.tokenizer is None or all(Path(c).is_file() for c in staged.tokenizer.corpus)
    else:
        cfg = load_config(None, [], **recipe.settings("train"), data=["x.jsonl"], output_dir="out")
        parse_spec(cfg.model)
    if recipe.generate is not None:
        gen = GenerateConfig(**{**recipe.settings("generate"), "output": "x.jsonl"})
        parse_spec(gen.model, base_urls=gen.base_url)
    if recipe.distill is not None:
        parse_spec(DistillConfig(**{**recipe.distill, "output": "x.jsonl"}).model)
    if recipe.eval is not None and recipe.eval.judge != "none":
        parse_spec(recipe.eval.judge, base_urls=recipe.eval.judge_base_url or None)
    assert recipe.enabled("train")


def test_an_unknown_setting_in_a_recipe_is_refused_with_its_place(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  methd: lora\n")
    with pytest.raises(CamelidError, match=r"bad.yaml: field 'train.methd': unknown setting"):
        load_recipe(bad)
    bad.write_text("name: x\ngenerate:\n  nmu: 3\ntrain: {}\n")
    with pytest.raises(CamelidError, match=r"generate\.nmu"):
        load_recipe(bad)


def test_overrides_reach_the_sections(tmp_path):
    recipe = load_recipe(RECIPES[0].parent / "quickstart.yaml", ["generate.num=3", "train.method=full", "seed=7"])
    assert recipe.generate.num == 3 and recipe.train.method == "full" and recipe.seed == 7


def test_the_eval_judge_prompt_set_is_a_recipe_setting(tmp_path):
    recipe = load_recipe(RECIPES[0].parent / "quickstart.yaml", ["eval.prompts=mt-bench"])
    assert recipe.eval.prompts == "mt-bench"
    assert load_recipe(RECIPES[0].parent / "quickstart.yaml").eval.prompts == "camelid"
    with pytest.raises(CamelidError, match=r"eval\.prompts"):
        load_recipe(RECIPES[0].parent / "quickstart.yaml", ["eval.prompts=fastchat"])
