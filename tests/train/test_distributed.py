"""Two processes (torchrun, DDP over gloo) give the losses of one process at the same global batch, and report
them once (the main process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from camelid.core.io import read_jsonl
from camelid.train.sft import train
from tests.train.conftest import tiny_config


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_at_the_same_global_batch(tiny_model, alpaca_30, tmp_path):
    settings = dict(method="full", lr=1e-2, micro_batch_size=2, global_batch_size=8, max_steps=4)
    one = train(tiny_config(tiny_model, alpaca_30, tmp_path / "one", **settings))
    two = tmp_path / "two"
    args = [f"model=hf:{tiny_model}", f"data=[{alpaca_30}]", f"output_dir={two}", "method=full", "lr=1e-2",
            "micro_batch_size=2", "global_batch_size=8", "max_steps=4", "warmup_ratio=0", "max_length=128",
            "precision=fp32", "seed=0", "report_to=[tensorboard]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), "-m", "camelid", "train", *args],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stderr
    losses = [r["loss"] for _, r in read_jsonl(two / "trainer_log.jsonl")]
    assert losses == pytest.approx(one.losses, abs=1e-5)
    # only the main process reports: one TensorBoard event file, holding the losses of trainer_log.jsonl
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = (two / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(losses, rel=1e-6)
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(two / "model.safetensors")
    # Adam turns float-order noise in near-zero gradients into up to ~lr-sized steps: compare loosely
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
