"""`camelid sweep` end to end on the embedded model: every cell a run, a failed cell reported, kill and resume."""

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
from camelid.pipeline.sweep import cell_name, cells, load_sweep
from tests.pipeline.test_run import tiny_recipe

REPO = Path(__file__).resolve().parents[2]


def tiny_sweep(tmp_path: Path, axes: str) -> Path:
    recipe = tiny_recipe(tmp_path)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"name: tiny_sweep\nrecipe: {recipe}\nrun_dir: {tmp_path / 'cells'}\naxes:\n{axes}")
    return sweep


def test_the_shipped_sweep_is_a_grid_of_valid_recipes(capsys):
    sweep, base = load_sweep(REPO / "recipes" / "sweep_methods.yaml")
    grid = cells(sweep)
    assert len(grid) == 6 and {c["train.method"] for c in grid} == {"full", "lora", "qlora"}
    assert main(["sweep", str(REPO / "recipes" / "sweep_methods.yaml"), "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and all(x.startswith("camelid run ") and "train.method=" in x for x in lines)
    assert len({cell_name(c) for c in grid}) == 6  # every cell its own run directory


@pytest.mark.slow
def test_a_sweep_reports_every_cell_goes_on_after_a_failed_one_and_a_rerun_skips_finished_cells(tmp_path, capsys):
    sweep = tiny_sweep(tmp_path, "  train.method: [lora, nonsense]\n  seed: [0, 1]\n")
    assert main(["sweep", str(sweep)]) == 1  # 2 of 4 cells failed: said at the end, after the others ran
    out = tmp_path / "cells"
    rows = read_json(out / "cells.json")
    assert [r["status"] for r in rows] == ["done", "done", "failed", "failed"]
    assert "train.method" in rows[2]["error"] or "method" in rows[2]["error"]
    assert rows[0]["before_response_loss"] == rows[1]["before_response_loss"]  # seeds 0 and 1: the same eval set
    for r in rows[:2]:
        assert r["after_response_loss"] > 0 and r["trainable_params"] > 0 and r["train_time_s"] > 0
        assert r["command"].startswith("camelid run ") and "seed=" in r["command"]
    report = (out / "report" / "report.md").read_text()
    assert "method-lora_seed-0" in report and "failed" in report and "camelid run " in report
    assert any(p.suffix == ".png" for p in (out / "report").iterdir())
    finished = [read_json(out / r["cell"] / ".stages" / "train.json")["finished"] for r in rows[:2]]
    capsys.readouterr()
    assert main(["sweep", str(sweep)]) == 1
    assert capsys.readouterr().err.count("train: unchanged, skipped") == 2
    assert finished == [read_json(out / r["cell"] / ".stages" / "train.json")["finished"] for r in rows[:2]]


@pytest.mark.slow
def test_a_sweep_killed_mid_way_resumes_without_redoing_finished_cells(tmp_path):
    sweep = tiny_sweep(tmp_path, "  seed: [0, 1]\n")
    out = tmp_path / "cells"
    proc = subprocess.Popen([sys.executable, "-m", "camelid", "sweep", str(sweep)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    second = out / "seed-1" / ".stages" / "train.json"
    while time.time() < deadline and not second.is_file():  # the first cell is done, the second has begun
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = read_json(out / "seed-0" / ".stages" / "eval.json")
    assert first["status"] == "done"
    rerun = subprocess.run([sys.executable, "-m", "camelid", "sweep", str(sweep)], capture_output=True, text=True,
                           timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert read_json(out / "seed-0" / ".stages" / "eval.json")["finished"] == first["finished"]
    rows = json.loads((out / "cells.json").read_text())
    assert [r["status"] for r in rows] == ["done", "done"] and all(r["after_response_loss"] for r in rows)
