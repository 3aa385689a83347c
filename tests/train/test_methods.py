"""Full, LoRA, DoRA and QLoRA runs write a loadable run directory; an empty adapter is refused."""

from __future__ import annotations

import json

import pytest

from camelid.core.io import read_jsonl, sha256_file
from camelid.train.model import AdapterError, check_adapter
from camelid.train.sft import train
from tests.train.conftest import tiny_config


def test_a_lora_run_writes_a_nonempty_adapter_and_everything_chat_needs(tiny_model, alpaca_30, tmp_path):
    out = tmp_path / "lora"
    r = train(tiny_config(tiny_model, alpaca_30, out, method="lora", lr=1e-2, max_steps=2, template="vicuna_v1.1",
                          eval_steps=2, val_size=4, eval_prompts=["Name a color."], sample_max_tokens=4))
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "camelid.json",
            "trainer_log.jsonl", "loss.png"} <= names
    assert "model.safetensors" not in names
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model.resolve()) and adapter["r"] == 8
    assert check_adapter(out)["lora_B_nonzero"] > 0
    meta = json.loads((out / "camelid.json").read_text())
    assert meta["template"] == "vicuna_v1.1" and meta["method"] == "lora" and meta["mask"] == "assistant"
    assert meta["data"] == [{"path": str(alpaca_30.resolve()), "sha256": sha256_file(alpaca_30)}]
    assert meta["data_stats"]["records"] == 30 and meta["data_stats"]["kept"] == 30
    assert meta["config"]["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert meta["final_loss"] == pytest.approx(r.final_loss) and meta["steps"] == 2
    assert meta["trainable_params"] == r.trainable_params > 0 and meta["peak_memory_mb"] > 0
    assert meta["tokens_seen"] > 0 and meta["eval_loss"] is not None
    rows = [row for _, row in read_jsonl(out / "trainer_log.jsonl")]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2]
    assert {"loss", "lr", "tokens_per_s", "grad_norm"} <= set(rows[0])
    assert any("eval_loss" in row for row in rows) and any("sample" in row for row in rows)

    from camelid.models import load_model

    m = load_model(f"hf:{out}")
    assert m.template.name == "vicuna_v1.1" and m.run.method == "lora"
    c = m.chat([{"role": "user", "content": "Hi"}], __import__("camelid.models", fromlist=["Sampling"]).Sampling(
        temperature=0, max_tokens=3))
    assert c.completion_tokens <= 3


def test_a_full_run_writes_a_checkpoint_with_the_stop_tokens(tiny_model, alpaca_30, tmp_path):
    out = tmp_path / "full"
    train(tiny_config(tiny_model, alpaca_30, out, method="full", max_steps=1, template="chatml"))
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2  # <|im_end|>: chatml's end token is this tokenizer's EOS
    from camelid.models import load_model

    assert load_model(f"hf:{out}").template.name == "chatml"


def test_dora_trains_magnitudes_too(tiny_model, alpaca_30, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "dora"
    train(tiny_config(tiny_model, alpaca_30, out, method="dora", lr=1e-2, max_steps=1))
    keys = load_file(out / "adapter_model.safetensors")
    assert any("lora_magnitude_vector" in k for k in keys)
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True


def test_qlora_trains_on_a_4bit_base(tiny_model, alpaca_30, tmp_path):
    out = tmp_path / "qlora"
    r = train(tiny_config(tiny_model, alpaca_30, out, method="qlora", lr=1e-2, max_steps=1,
                          lora={"target_modules": ["all-linear"]}))
    assert r.final_loss is not None and check_adapter(out)["lora_B_nonzero"] > 0
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert {"q_proj", "v_proj", "gate_proj", "down_proj"} <= {t.rsplit(".", 1)[-1] for t in targets}


def test_an_adapter_that_learned_nothing_is_refused(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(tmp_path / "untrained")
    with pytest.raises(AdapterError, match="the adapter is empty"):
        check_adapter(tmp_path / "untrained")


def test_a_one_step_run_already_learns_despite_warmup(tiny_model, alpaca_30, tmp_path):
    """transformers' warmup runs step 1 at lr 0, so a 1-step LoRA run saves an all-zero adapter; ours does not."""
    from camelid.train.sft import lr_factor

    assert lr_factor(0, 1, 1, "cosine") == 1.0
    assert all(lr_factor(s, 100, 3, "cosine") > 0 for s in range(100))
    assert [round(lr_factor(s, 10, 2, "linear"), 3) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 0.125]
    out = tmp_path / "one"
    train(tiny_config(tiny_model, alpaca_30, out, method="lora", max_steps=1, warmup_ratio=0.03))
    assert check_adapter(out)["lora_B_nonzero"] > 0
