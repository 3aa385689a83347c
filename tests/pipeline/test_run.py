"""`camelid run` end to end on the embedded model: stages, skipping by content hash, kill and resume, the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from camelid.cli import main
from camelid.core.io import read_json

ROWS = [("Name a primary color.", "", "Red."), ("What is 2 + 3?", "", "5."),
        ("Give the opposite of hot.", "", "Cold."), ("Translate to French.", "Thank you", "Merci."),
        ("Is the sentence positive or negative?", "I love this song.", "Positive."),
        ("Name a fruit that is yellow.", "", "A banana."), ("What is the capital of Japan?", "", "Tokyo."),
        ("Reverse the word.", "stop", "pots.")]


def tiny_recipe(tmp_path: Path, **extra) -> Path:
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps({"instruction": i, "input": x, "output": o}) + "\n" for i, x, o in ROWS))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"""
name: tiny
run_dir: {tmp_path / 'run'}
data: [{data}]
train: {{model: embedded, template: tokenizer, method: lora, max_steps: {extra.get('steps', 2)}, lr: 1.0e-3,
        micro_batch_size: 4, global_batch_size: 4, max_length: 128}}
eval: {{heldout: 2, max_tokens: 8, judge_max_tokens: 24}}
""")
    return recipe


def test_runs_that_differ_only_by_seed_hold_out_the_same_questions(tmp_path):
    from camelid.pipeline.recipe import EvalSection, Recipe
    from camelid.pipeline.run import prepare

    def heldout(seed: int, **ev) -> bytes:
        run = tmp_path / f"seed{seed}"
        prepare(Recipe(seed=seed, eval=EvalSection(heldout=8, **ev)), run)
        return (run / "prepare" / "heldout.jsonl").read_bytes()

    assert heldout(0) == heldout(1)  # a sweep's seeds vary training, not the eval set
    first = heldout(1)
    assert heldout(1, heldout_seed=7) != first  # an existing split is redone when its inputs change
    assert len(heldout(1, heldout_seed=7).splitlines()) == 8


@pytest.mark.slow
def test_a_recipe_runs_every_stage_writes_a_report_and_a_rerun_skips_them_all(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path)
    assert main(["run", str(recipe)]) == 0
    run = tmp_path / "run"
    for stage in ("train", "eval"):
        assert read_json(run / ".stages" / f"{stage}.json")["status"] == "done"
    metrics = read_json(run / "eval" / "metrics.json")
    assert metrics["before"]["response_loss"] > 0 and metrics["after"]["response_loss"] > 0
    assert metrics["pairwise"]["n"] + metrics["pairwise"]["errors"] == 2
    report = (run / "report" / "report.md").read_text()
    assert "held-out response loss" in report and "train_loss.png" in report and (run / "report" / "eval.png").is_file()
    assert metrics["response_loss_change"]["n"] == 2 and len(metrics["before"]["response_loss_ci"]) == 2
    assert metrics["self_stop"]["after"]["n"] == 2 and metrics["rouge_l"]["n"] == 2
    assert "paired 95% CI" in report and "| – |" not in report and "(---)" not in report
    before = {s: read_json(run / ".stages" / f"{s}.json")["finished"] for s in ("train", "eval")}
    capsys.readouterr()
    assert main(["run", str(recipe)]) == 0
    assert "train: unchanged, skipped" in capsys.readouterr().err
    assert before == {s: read_json(run / ".stages" / f"{s}.json")["finished"] for s in ("train", "eval")}
    # a crash after training finished but before the run recorded it: the rerun adopts the finished run
    state = read_json(run / ".stages" / "train.json")
    (run / ".stages" / "train.json").write_text(json.dumps({**state, "status": "running"}))
    assert main(["run", str(recipe)]) == 0
    err = capsys.readouterr().err
    assert "train: the run had finished before the crash, adopting it" in err, err
    adopted = read_json(run / ".stages" / "train.json")
    assert adopted["status"] == "done" and adopted["summary"]["final_loss"] == state["summary"]["final_loss"]
    assert read_json(run / ".stages" / "eval.json")["finished"] == before["eval"]  # same weights: eval stands
    # a changed setting reruns that stage and what depends on it
    assert main(["run", str(recipe), "eval.max_tokens=6", "--only", "eval"]) == 0
    assert read_json(run / ".stages" / "train.json")["finished"] == adopted["finished"]
    assert read_json(run / ".stages" / "eval.json")["finished"] > before["eval"]


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_without_redoing_finished_stages(tmp_path):
    recipe = tiny_recipe(tmp_path, steps=2)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "camelid", "run", str(recipe)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    eval_state = run / ".stages" / "eval.json"
    while time.time() < deadline and not (eval_state.is_file() and read_json(eval_state)["status"] == "running"):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.5)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    train_done = read_json(run / ".stages" / "train.json")
    assert train_done["status"] == "done" and read_json(eval_state)["status"] == "running"
    rerun = subprocess.run([sys.executable, "-m", "camelid", "run", str(recipe)], capture_output=True, text=True,
                           timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "train: unchanged, skipped" in rerun.stderr and "eval: resuming" in rerun.stderr
    assert read_json(run / ".stages" / "train.json")["finished"] == train_done["finished"]
    assert read_json(eval_state)["status"] == "done" and (run / "report" / "report.html").is_file()
