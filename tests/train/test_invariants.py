"""Training invariants (trl/torchtune style) on a tiny random-init Llama with the embedded tokenizer."""

from __future__ import annotations

import json
import shutil

import pytest

from camelid.core.io import read_jsonl
from camelid.train.sft import TrainingError, train
from tests.train.conftest import tiny_config

# The first steps of the reference recipe (tiny Llama, seed 0, full fine-tuning, lr 1e-2, 8 x 1, packed), recorded
# on torch 2.13 / transformers 5.23 CPU. A change here means the loss, the data order or the schedule changed.
REFERENCE_LOSSES = [10.837303, 10.585082, 9.905952, 9.483766]


def _losses(run_dir):
    return [r["loss"] for _, r in read_jsonl(run_dir / "trainer_log.jsonl") if "loss" in r]


def test_recipe_reproduces_the_stored_losses(tiny_model, alpaca_30, tmp_path):
    r = train(tiny_config(tiny_model, alpaca_30, tmp_path / "run", lr=1e-2))
    assert r.losses == pytest.approx(REFERENCE_LOSSES, abs=1e-4)


def test_batch_8_by_1_equals_batch_1_by_8_accumulated(tiny_model, alpaca_30, tmp_path):
    big = train(tiny_config(tiny_model, alpaca_30, tmp_path / "a", micro_batch_size=8, global_batch_size=8))
    small = train(tiny_config(tiny_model, alpaca_30, tmp_path / "b", micro_batch_size=1, global_batch_size=8))
    assert small.losses == pytest.approx(big.losses, abs=1e-5)
    # the loss is normalised over the whole window, not averaged per micro-batch
    assert len(big.losses) == 4


def test_packed_and_padded_batches_give_the_same_losses(tiny_model, alpaca_30, tmp_path):
    packed = train(tiny_config(tiny_model, alpaca_30, tmp_path / "p", packing=True))
    padded = train(tiny_config(tiny_model, alpaca_30, tmp_path / "u", packing=False))
    assert padded.losses == pytest.approx(packed.losses, abs=1e-5)


def test_a_resumed_run_reproduces_the_uninterrupted_losses(tiny_model, alpaca_30, tmp_path):
    # LoRA with dropout: the resumed steps only match if RNG, data order, optimizer and schedule all come back
    kw = dict(method="lora", lr=1e-2, max_steps=6, save_steps=3, lora={"dropout": 0.1, "r": 4, "alpha": 8},
              global_batch_size=4, micro_batch_size=2)
    whole = train(tiny_config(tiny_model, alpaca_30, tmp_path / "whole", **kw))
    ckpt = tmp_path / "whole" / "checkpoints" / "step-000003"
    assert ckpt.is_dir() and (ckpt / "model.safetensors").stat().st_size < 200_000  # adapter weights only
    # a run killed after step 5 left its checkpoint of step 3 and a log running to step 5
    killed = tmp_path / "killed"
    shutil.copytree(ckpt, killed / "checkpoints" / ckpt.name)
    rows = [r for _, r in read_jsonl(tmp_path / "whole" / "trainer_log.jsonl") if r["step"] <= 5]
    (killed / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    resumed = train(tiny_config(tiny_model, alpaca_30, killed, **kw))
    assert resumed.steps == 6 and len(resumed.losses) == 3
    assert resumed.losses == pytest.approx(whole.losses[3:], abs=1e-6)
    assert [r["step"] for _, r in read_jsonl(killed / "trainer_log.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert _losses(killed) == pytest.approx(_losses(tmp_path / "whole"), abs=1e-6)


def test_resuming_with_changed_settings_is_refused(tiny_model, alpaca_30, tmp_path):
    from camelid.core.io import CamelidError

    train(tiny_config(tiny_model, alpaca_30, tmp_path / "a", max_steps=3, save_steps=2))
    ckpt = tmp_path / "a" / "checkpoints" / "step-000002"
    shutil.copytree(ckpt, tmp_path / "b" / "checkpoints" / ckpt.name)
    with pytest.raises(CamelidError, match=r"lr \(was 0.001, now 0.002\)"):
        train(tiny_config(tiny_model, alpaca_30, tmp_path / "b", max_steps=3, lr=2e-3))


def test_a_finished_run_is_not_overwritten_by_accident(tiny_model, alpaca_30, tmp_path):
    from camelid.core.io import CamelidError

    train(tiny_config(tiny_model, alpaca_30, tmp_path / "a", max_steps=1))
    with pytest.raises(CamelidError, match="holds a finished run"):
        train(tiny_config(tiny_model, alpaca_30, tmp_path / "a", max_steps=1))
    again = train(tiny_config(tiny_model, alpaca_30, tmp_path / "a", max_steps=1, overwrite=True))
    assert again.steps == 1


def test_a_diverging_run_stops_with_the_step_and_what_to_try(tiny_model, alpaca_30, tmp_path):
    with pytest.raises(TrainingError) as e:
        train(tiny_config(tiny_model, alpaca_30, tmp_path / "nan", lr=1e25, max_steps=4))
    msg = str(e.value)
    assert "at step 2" in msg and "lower lr" in msg and "records" in msg
    assert not (tmp_path / "nan" / "camelid.json").exists()


def test_ctrl_c_finishes_the_step_saves_a_checkpoint_and_the_rerun_resumes(tiny_model, alpaca_30, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    args = [f"model=hf:{tiny_model}", f"data=[{alpaca_30}]", f"output_dir={out}", "method=full", "lr=1e-3",
            "micro_batch_size=4", "global_batch_size=8", "max_steps=60", "warmup_ratio=0", "max_length=128",
            "precision=fp32", "seed=0"]
    p = subprocess.Popen([sys.executable, "-m", "camelid", "train", *args], stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    for line in p.stderr:
        if line.startswith("step 2/60"):
            p.send_signal(signal.SIGINT)
            break
    err = p.stderr.read()
    assert p.wait(timeout=120) == 130, err[-2000:]
    assert "interrupted: checkpoint of step" in " ".join(err.split())
    ckpts = list((out / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1 and not (out / "camelid.json").exists()
    stopped_at = int(ckpts[0].name.split("-")[1])
    assert 2 <= stopped_at < 60
    r = train(tiny_config(tiny_model, alpaca_30, out, max_steps=60))
    assert r.steps == 60 and len(r.losses) == 60 - stopped_at
    assert [row["step"] for _, row in read_jsonl(out / "trainer_log.jsonl")] == list(range(1, 61))
