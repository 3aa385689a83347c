"""transformers 4.x reads camelid's checkpoints as 5.x does (issue 16, item 10): rope_theta, tokenizer class,
token ids, chat prompt and logits of a run, a merged adapter and the embedded base, loaded by transformers 4.57 in
a separate interpreter.

The 4.x interpreter is a venv of its own (transformers 4 and 5 cannot share one). Build it once, e.g. in CI:
    python3 -m venv .venv-transformers4
    .venv-transformers4/bin/pip install "transformers==4.57.*" torch==2.13.0 safetensors
    export CAMELID_TRANSFORMERS4_PYTHON=$PWD/.venv-transformers4/bin/python
(CPU wheels: add --index-url https://download.pytorch.org/whl/cpu for torch). Without it these tests skip."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from camelid.modelfiles.merge import merge_adapter
from camelid.train.sft import train
from tests.train.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]
# the env var, else a venv beside the checkout (.venv-tf4 inside it, or venv457 next to it / next to worktrees)
_CANDIDATES = [Path(p) for p in [os.environ.get("CAMELID_TRANSFORMERS4_PYTHON")] if p] + [
    ROOT / ".venv-tf4" / "bin" / "python", ROOT.parent / "venv457" / "bin" / "python",
    ROOT.parent / "wt" / "venv457" / "bin" / "python"]
PYTHON4 = next((p.absolute() for p in _CANDIDATES if p.is_file()), _CANDIDATES[0].absolute())
pytestmark = pytest.mark.skipif(not PYTHON4.is_file(), reason="no transformers 4.x interpreter (set "
                                "CAMELID_TRANSFORMERS4_PYTHON; see this module's docstring)")
TEXT = "Below is an instruction. The capital of France is Paris, and 한국어 works too."


def _load4(directory: Path) -> dict:
    proc = subprocess.run([str(PYTHON4), str(Path(__file__).with_name("transformers4_load.py")), str(directory),
                           TEXT], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _load5(directory: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ids = tok(TEXT, add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return {"rope_theta": model.config.rope_parameters["rope_theta"], "ids": ids, "eos": tok.eos_token,
            "pad": tok.pad_token, "logits": logits,
            "prompt": tok.apply_chat_template([{"role": "user", "content": "Name a color."}], tokenize=False,
                                              add_generation_prompt=True)}


def _same(directory: Path) -> float:
    import torch

    four, five = _load4(directory), _load5(directory)
    assert four["version"].startswith("4.")
    for key in ("rope_theta", "ids", "eos", "pad", "prompt"):
        assert four[key] == five[key], (key, four[key], five[key])
    diff = (torch.tensor(four["logits"]) - five["logits"]).abs().max().item()
    assert diff < 1e-4
    assert torch.equal(torch.tensor(four["logits"]).argmax(-1), five["logits"].argmax(-1))
    return diff


@pytest.fixture(scope="module")
def tiny_rope(tmp_path_factory, tokenizer) -> Path:
    """The tiny Llama with SmolLM2's rope_theta (100000): 4.x falling back to 10000 would show in the logits."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, rope_theta=100000.0, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("tiny-rope")
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def test_transformers4_reads_a_full_run_as_transformers5_does(tiny_rope, alpaca_30, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_rope, alpaca_30, run, method="full", max_steps=1))
    config = json.loads((run / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000.0
    assert json.loads((run / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    _same(run)


def test_transformers4_reads_a_merged_adapter_and_the_embedded_base(tiny_rope, alpaca_30, tmp_path):
    from camelid.models.checkpoint import embedded_hf_dir

    run = tmp_path / "run"
    train(tiny_config(tiny_rope, alpaca_30, run, method="lora", max_steps=1, lr=1e-2))
    _same(merge_adapter(run, tmp_path / "merged"))
    _same(embedded_hf_dir())
