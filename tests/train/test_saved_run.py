"""What a run writes is read right by other tools (issue 16, items 6 and 7): the saved tokenizer prompts the model
as training did (transformers' `apply_chat_template` on the saved files), and an adapter names a portable base that
plain PEFT loads (`PeftModel.from_pretrained`, and `AutoPeftModelForCausalLM` on a fresh Hugging Face cache)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from camelid.core.templates import get_template
from camelid.modelfiles.check import check_hf
from camelid.modelfiles.merge import merge_adapter
from camelid.models.spec import EMBEDDED_HUB_ID
from camelid.train.sft import train
from tests.train.conftest import tiny_config

ROWS = json.loads((Path(__file__).parent / "data" / "alpaca_30.json").read_text())[:6]


def _conversations() -> list[list[dict]]:
    out = []
    for r in ROWS:
        user = {"role": "user", "content": r["instruction"], **({"input": r["input"]} if r["input"] else {})}
        out.append([user, {"role": "assistant", "content": r["output"]}])
    return out


def _prompts_equal(run: Path, template: str) -> int:
    """How many of the conversations transformers renders from the saved files exactly as camelid trained them
    (the whole exchange with EOS, and the generation prompt). Inputs are passed as camelid's `input` field."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run)
    t = get_template(template, tok.chat_template, tok.bos_token, tok.eos_token)
    equal = 0
    for conv in _conversations():
        trained = t.render(conv, bos_token=tok.bos_token, eos_token=tok.eos_token)
        prompt = t.render(conv[:1], True, bos_token=tok.bos_token, eos_token=tok.eos_token)
        equal += (tok.apply_chat_template(conv, tokenize=False) == trained
                  and tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True) == prompt)
    return equal


@pytest.mark.parametrize("template", ["alpaca", "vicuna_v1.1", "chatml"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_saved_tokenizer_carries_the_trained_template_and_a_pad_that_is_no_end_token(
        tiny_model, alpaca_30, tmp_path, method, template):
    run = tmp_path / "run"
    train(tiny_config(tiny_model, alpaca_30, run, template=template, method=method, max_steps=1))
    assert _prompts_equal(run, template) == len(ROWS) == 6
    report = check_hf(str(run))
    codes = {f.code for f in report.findings}
    assert not codes & {"chat_template_differs", "chat_template_end", "pad_is_eos"}, report.findings
    if method == "lora":  # export --merge writes the same
        merged = merge_adapter(run, tmp_path / "merged")
        assert _prompts_equal(merged, template) == 6
        assert not {f.code for f in check_hf(str(merged)).findings} & {"chat_template_differs", "pad_is_eos"}


@pytest.fixture(scope="module")
def embedded_lora(tmp_path_factory, alpaca_30) -> Path:
    """A LoRA run on the embedded model (one step)."""
    run = tmp_path_factory.mktemp("embedded-lora") / "run"
    from camelid.train.config import load_config

    cfg = load_config(None, [], model="embedded", data=[str(alpaca_30)], output_dir=str(run), method="lora", lr=1e-2,
                      micro_batch_size=2, global_batch_size=2, max_steps=1, warmup_ratio=0.0, max_length=64,
                      precision="fp32", seed=0)
    train(cfg)
    return run


def test_an_adapter_on_the_embedded_model_names_its_hub_id_and_no_path_of_this_machine(embedded_lora):
    from camelid.models.checkpoint import cache_dir, resolve

    text = (embedded_lora / "adapter_config.json").read_text()
    assert json.loads(text)["base_model_name_or_path"] == EMBEDDED_HUB_ID
    assert str(cache_dir()) not in text and str(Path.home()) not in text and "/tmp" not in text
    moved = embedded_lora.parent / "moved"  # another place, as on another machine: the base still resolves
    shutil.copytree(embedded_lora, moved)
    assert resolve(str(moved)).base == resolve("embedded").base


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_plain_peft_loads_the_adapter_onto_a_base_from_the_local_cache(embedded_lora):
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    from camelid.models.checkpoint import embedded_hf_dir, resolve

    conf = PeftConfig.from_pretrained(embedded_lora)
    assert conf.base_model_name_or_path == EMBEDDED_HUB_ID
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(embedded_hf_dir()), embedded_lora).eval()
    ckpt = resolve(str(embedded_lora))
    ours = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ckpt.base), ckpt.adapter).eval()
    ids = list(range(100, 132))
    assert torch.equal(_logits(plain, ids), _logits(ours, ids))
    base = AutoModelForCausalLM.from_pretrained(embedded_hf_dir()).eval()
    assert not torch.equal(_logits(plain, ids), _logits(base, ids))  # the adapter did something


def test_auto_peft_model_loads_the_adapter_from_a_fresh_hugging_face_cache(embedded_lora, tmp_path):
    """Another machine: a Hugging Face cache holding only the hub model (laid out as huggingface_hub writes it),
    no camelid cache; `AutoPeftModelForCausalLM.from_pretrained(run)` must find the base by its hub id."""
    from camelid.models.checkpoint import embedded_hf_dir

    hub = tmp_path / "hf" / "hub"
    repo = hub / ("models--" + EMBEDDED_HUB_ID.replace("/", "--"))
    revision = "0" * 40
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    for f in embedded_hf_dir().iterdir():
        if f.is_file():
            os.symlink(f, snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    script = ("import sys, torch\nfrom peft import AutoPeftModelForCausalLM\n"
              "m = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]).eval()\n"
              "print(m.base_model.model.config._name_or_path)\n"
              "with torch.no_grad(): print(float(m(torch.tensor([list(range(100, 132))])).logits.abs().sum()))\n")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1",
           "CAMELID_CACHE": str(tmp_path / "no-camelid-cache")}
    proc = subprocess.run([sys.executable, "-c", script, str(embedded_lora)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    name, total = proc.stdout.split()[-2:]
    assert str(snap) in name or EMBEDDED_HUB_ID in name
    assert not (tmp_path / "no-camelid-cache").exists()
