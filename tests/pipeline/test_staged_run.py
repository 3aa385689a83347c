"""`camelid run` with a staged train section (KoLlama2 / Chinese-LLaMA-Alpaca): the shipped recipes shrunk onto a
tiny model; tokenizer -> embedding stage -> LoRA stage -> eval, a rerun skips, a kill mid-stage resumes."""

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
from camelid.core.io import CamelidError, read_json
from camelid.pipeline.recipe import load_recipe
from camelid.pipeline.sweep import cell_name, cell_overrides, load_sweep, cells
from tests.models.servers import TeacherServer
from tests.train.conftest import embedded_dir, tiny_model, tokenizer  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
DATA = REPO / "src" / "camelid" / "train" / "data"


def shrunk(run_dir: Path, model: Path, data: Path | None = None, steps: int = 2) -> list[str]:
    """Overrides that make a shipped staged recipe run in a minute on the tiny model (generation skipped: data)."""
    return [f"run_dir={run_dir}", f"data=[{data or DATA / 'ko_instructions.jsonl'}]",
            "train.instructions.data=[generated]", "train.tokenizer.add=200", "train.tokenizer.charsets=[]", f"train.embeddings.model=hf:{model}", "train.embeddings.max_length=64",
            f"train.max_steps={steps}", "train.micro_batch_size=4", "train.global_batch_size=8",
            "train.precision=fp32", "train.lr=1.0e-2", "train.instructions.lora.dropout=0", "eval.heldout=2",
            "eval.max_tokens=8", "eval.judge_max_tokens=24"]


def test_a_staged_train_section_places_every_output_in_the_run_and_routes_overrides(tmp_path):
    r = load_recipe(RECIPES / "kollama2.yaml", [f"run_dir={tmp_path}", "train.instructions.max_steps=3",
                                                "train.tokenizer.add=50", "train.lr=1e-3"])
    run = r.staged()
    assert run.tokenizer.output == str(tmp_path / "train" / "tokenizer") and run.tokenizer.add == 50
    first, second = run.stages
    assert (first.name, first.config.output_dir) == ("embeddings", str(tmp_path / "train" / "embeddings"))
    assert first.config.tokenizer == run.tokenizer.output and first.config.data == [str(DATA / "ko_corpus.txt")]
    assert second.config.model == first.config.output_dir
    assert second.config.data == [str(tmp_path / "generate" / "data.jsonl"), str(DATA / "ko_instructions.jsonl")]
    assert (first.config.max_steps, second.config.max_steps) == (None, 3)
    assert first.config.lr == second.config.lr == 1e-3
    assert r.model_dir == tmp_path / "train" / "instructions" and r.base_model == "embedded"
    for off in ("train.tokenizer=null", "train.tokenizer.add=0"):  # the run without vocabulary extension
        plain = load_recipe(RECIPES / "kollama2.yaml", [off]).staged()
        assert plain.tokenizer is None and plain.stages[0].config.tokenizer is None
    zh = load_recipe(RECIPES / "chinese_alpaca.yaml", [f"run_dir={tmp_path}"]).staged()
    assert zh.stages[1].config.data == [str(tmp_path / "generate" / "data.jsonl"), str(DATA / "zh_instructions.jsonl")]
    assert zh.stages[1].config.template == "chinese_alpaca" and zh.tokenizer.charsets == ["hanzi"]
    assert zh.stages[1].config.lora.modules_to_save == "auto"


@pytest.mark.parametrize("override,message", [
    ("train.embeddings.output_dir=x", r"train\.embeddings\.output_dir is set by the run"),
    ("train.tokenizer.output=x", r"train\.tokenizer\.output is set by the run"),
    ("train.instructions.lora.r=0", r"stage instructions.*lora\.r"),
    ("train.embeddings.methd=full", r"stage embeddings.*methd.*unknown setting"),
    ("train.tokenizer.add=-1", r"tokenizer\.add"),
    ("train.tokenizer.corpus=[]", r"tokenizer\.corpus"),
])
def test_a_bad_staged_setting_is_refused_with_its_place(override, message):
    with pytest.raises(CamelidError, match=message):
        load_recipe(RECIPES / "kollama2.yaml", [override])


def test_a_staged_section_with_other_keys_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  stages: [{name: a}]\n  lr: 1.0e-3\n")
    with pytest.raises(CamelidError, match=r"bad.yaml: field 'train.lr': unknown setting"):
        load_recipe(bad)
    bad.write_text("name: x\ntrain:\n  stages: []\n")
    with pytest.raises(CamelidError, match=r"stages must be a list"):
        load_recipe(bad)


def test_the_vocabulary_sweep_is_a_grid_of_valid_staged_recipes():
    sweep, base = load_sweep(RECIPES / "sweep_vocab.yaml")
    names = [cell_name(c) for c in cells(sweep)]
    assert names == ["add-0_seed-0", "add-0_seed-1", "add-8000_seed-0", "add-8000_seed-1"]
    for c in cells(sweep):
        run = load_recipe(base, cell_overrides(sweep, c)).staged()
        assert (run.tokenizer is None) == (c["train.tokenizer.add"] == 0)


class GibberishTeacher(TeacherServer):
    """A teacher whose every reply fails to parse, as the embedded 135M model's Korean does."""

    def reply(self, prompt: str) -> str:
        return " 실마, 번호에 중어났까\n7. 입력:\n고줄써직고\n"


@pytest.mark.parametrize("beside", [True, False], ids=["beside-written-data", "alone"])
def test_a_generation_that_keeps_nothing_stops_the_run_only_when_a_stage_had_nothing_else(tiny_model, tmp_path,
                                                                                           capsys, beside):
    teacher = GibberishTeacher()
    try:
        run = tmp_path / "run"
        data = ["generated", str(DATA / "ko_instructions.jsonl")] if beside else ["generated"]
        # the shipped recipe with generation kept (no `data=`), on the tiny model, without a judge
        overrides = [o for o in shrunk(run, tiny_model) if not o.startswith(("data=", "train.instructions.data="))]
        rc = main(["run", str(RECIPES / "kollama2.yaml"), *overrides, f"train.instructions.data=[{','.join(data)}]",
                   "generate.model=openai:teacher", f"generate.base_url=[{teacher.url}]", "generate.num=4",
                   "generate.max_requests=2", "generate.request_batch_size=2", "generate.max_tokens=64",
                   "eval.judge=none"])
    finally:
        teacher.close()
    err = capsys.readouterr().err
    gen = read_json(run / ".stages" / "generate.json")
    assert gen["summary"]["kept"] == 0 if beside else gen["status"] == "running"
    if beside:
        assert rc == 0, err
        assert "generate kept no instruction" in " ".join(err.split()) and "training goes on" in err
        stages = read_json(run / ".stages" / "train.json")["summary"]["stages"]
        assert stages[1]["records"] == 24  # the written Korean set, without the empty generated file
    else:
        assert rc == 1 and "generate kept no instruction" in err and "nothing to train on" in err
        assert not (run / ".stages" / "train.json").exists()


@pytest.mark.slow
def test_the_kollama2_recipe_runs_every_stage_reports_per_character_loss_and_a_rerun_skips(tiny_model, tmp_path,
                                                                                           capsys):
    run = tmp_path / "run"
    args = ["run", str(RECIPES / "kollama2.yaml"), *shrunk(run, tiny_model)]
    assert main(args) == 0
    summary = read_json(run / ".stages" / "train.json")["summary"]
    assert [s["name"] for s in summary["stages"]] == ["embeddings", "instructions"]
    assert summary["tokenizer"]["added"] == 200 and summary["template"] == "alpaca_ko"
    assert summary["tokens_seen"] == sum(s["tokens_seen"] for s in summary["stages"])
    m = read_json(run / "eval" / "metrics.json")
    b, a = m["before"], m["after"]
    assert a["vocab_size"] == b["vocab_size"] + 200 and a["tokens_per_char"] < b["tokens_per_char"]
    for side in (b, a):
        lo, hi = side["response_loss_per_char_ci"]
        assert lo <= side["response_loss_per_char"] <= hi and side["response_loss_per_char"] > 0
        assert side["response_loss_per_char"] * side["response_chars"] == pytest.approx(
            side["response_loss"] * side["response_tokens"])
    assert m["pairwise"]["judge"] == "embedded"
    report = (run / "report" / "report.md").read_text(encoding="utf-8")
    for row in ("loss per character, 95% CI", "loss per character change (paired 95% CI", "tokens per character",
                "vocabulary (extended)", "train: embeddings", "train: instructions",
                "answers that stop by themselves"):
        assert row in report, row
    # the judge section: verdicts from the Korean prompts, or in words why the tiny judge budget gave none
    assert "after win rate" in report or "gave no parseable verdict" in report
    prompts = [json.loads(line)["user_prompts"][0] for line in (run / "eval" / "judgments.jsonl").open()]
    assert prompts and all(p.startswith("## 질문") for p in prompts)  # the Korean judge prompts
    stamps = {s: read_json(run / ".stages" / f"{s}.json")["finished"] for s in ("train", "eval")}
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "train: unchanged, skipped" in err and "eval: unchanged, skipped" in err
    assert stamps == {s: read_json(run / ".stages" / f"{s}.json")["finished"] for s in ("train", "eval")}


@pytest.mark.slow
def test_a_staged_run_killed_mid_stage_resumes_from_its_checkpoint_and_skips_the_finished_stage(tiny_model,
                                                                                                 tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "camelid", "run", str(RECIPES / "chinese_alpaca.yaml"),
            # the Chinese seed tasks as training data: this test is about stages and resuming, not quality
            *shrunk(run, tiny_model, data=REPO / "src" / "camelid" / "generate" / "seeds" / "seed_tasks_zh.jsonl",
                    steps=6), "train.instructions.save_steps=1", "train.instructions.max_length=96"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)
    ckpts = run / "train" / "instructions" / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and not (ckpts.is_dir() and any(p.name.startswith("step-") for p in ckpts.iterdir())):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stage1 = run / "train" / "embeddings" / "camelid.json"
    assert stage1.is_file() and not (run / "train" / "instructions" / "camelid.json").is_file()
    assert read_json(run / ".stages" / "train.json")["status"] == "running"
    stamp = stage1.stat().st_mtime_ns
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    err = " ".join(rerun.stderr.split())
    assert "train: resuming an interrupted run" in err and "already holds an extended tokenizer" in err
    assert "stage 1/2 embeddings: finished earlier" in err and "resuming from" in err
    assert stage1.stat().st_mtime_ns == stamp
    meta = read_json(run / "train" / "instructions" / "camelid.json")
    assert meta["steps"] == 6 and meta["template"] == "chinese_alpaca"
    prompts = [json.loads(line)["user_prompts"][0] for line in (run / "eval" / "judgments.jsonl").open()]
    assert prompts and all(p.startswith("## 问题") for p in prompts)  # the Chinese judge prompts


def test_a_sweep_over_tokenizers_compares_loss_per_character(tmp_path):
    from camelid.pipeline.sweep import Sweep, write_sweep_report

    sweep = Sweep(name="vocab", recipe="ko_vocab_base.yaml", axes={"train.tokenizer.add": [0, 8000]},
                  run_dir=str(tmp_path))
    # per token the extended cell looks worse (fewer, harder tokens); per character it is better
    rows = [{"cell": "add-0", "train.tokenizer.add": 0, "status": "done", "command": "camelid run x",
             "after_response_loss": 1.00, "after_response_loss_per_char": 2.00, "after_tokens_per_char": 2.0,
             "after_vocab_size": 49152, "train_time_s": 10.0},
            {"cell": "add-8000", "train.tokenizer.add": 8000, "status": "done", "command": "camelid run y",
             "after_response_loss": 2.50, "after_response_loss_per_char": 1.60, "after_tokens_per_char": 0.64,
             "after_vocab_size": 57152, "train_time_s": 12.0}]
    out = write_sweep_report(sweep, rows)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "different tokenizers" in md and "49,152, 57,152" in md
    assert "| held-out response loss per character | add=8000 |" in md
    assert "\n| held-out response loss per token |" not in md  # no "best" per token across vocabularies
    assert "| add-8000 | done | 1.600 | 2.500 | 0.64 |" in md
    assert (out / "loss_vs_time.png").is_file()
