"""The config schema, overrides, and every shipped config checked against the command it drives."""

from __future__ import annotations

import json

import pytest
import yaml

from camelid.cli import main
from camelid.core.io import CamelidError
from camelid.core.config import schema_yaml
from camelid.train.config import CONFIG_DIR, TrainConfig, load_config

TRAIN_CONFIGS = ["alpaca_lora", "alpaca_full", "qlora", "vicuna"]
ACCELERATE_CONFIGS = {"fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}


def test_defaults_follow_the_seeds():
    c = TrainConfig()
    assert (c.method, c.learning_rate, c.lora.r, c.lora.alpha, c.lora.dropout, c.lora.target_modules) == \
        ("lora", 3e-4, 8, 16, 0.05, ["q_proj", "v_proj"])
    full = TrainConfig(method="full")
    assert (full.learning_rate, full.epochs, full.max_length, full.lr_scheduler, full.warmup_ratio,
            full.global_batch_size) == (2e-5, 3, 512, "cosine", 0.03, 128)


def test_dotted_overrides_are_typed_yaml_values():
    c = load_config(None, ["lora.r=16", "lr=1e-4", "packing=false", "data=[a.json, b.json]", "lora.target_modules="
                           "[q_proj,k_proj]", "max_steps=5"])
    assert (c.lora.r, c.lora.alpha, c.lr, c.packing, c.data, c.lora.target_modules, c.max_steps) == \
        (16, 16, 1e-4, False, ["a.json", "b.json"], ["q_proj", "k_proj"], 5)


@pytest.mark.parametrize("override,message", [
    ("lora.rank=16", "field 'lora.rank': unknown setting"),
    ("lr=fast", "field 'lr': Input should be a valid number"),
    ("method=adapter", "field 'method': Input should be"),
    ("template=vicuna", "template 'vicuna' unknown"),
    ("global_batch_size=10", "not a multiple of micro_batch_size"),
    ("r16", "expected key=value"),
])
def test_bad_settings_name_the_setting(override, message):
    with pytest.raises(CamelidError, match=message):
        load_config(None, [override])


def test_the_commented_schema_loads_back_as_the_defaults(tmp_path):
    text = schema_yaml(TrainConfig)
    assert "packing: true  # padding-free" in text and "  r: 8  # rank" in text
    (tmp_path / "schema.yaml").write_text(text)
    assert load_config(tmp_path / "schema.yaml") == TrainConfig()


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_a_shipped_config_drives_camelid_train(name, tiny_model, alpaca_30, tmp_path, capsys):
    raw = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    cfg = load_config(name)
    assert cfg.model_dump() == TrainConfig(**raw).model_dump()  # every key is a real setting
    assert main(["train", name, "--show-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == cfg.model_dump()
    out = tmp_path / name
    args = ["train", name, f"model=hf:{tiny_model}", f"data=[{alpaca_30}]", f"output_dir={out}", "max_steps=1",
            "micro_batch_size=2", "global_batch_size=4", "max_length=128", "save_steps=null"]
    assert main(args) == 0
    meta = json.loads((out / "camelid.json").read_text())
    ran = meta["config"]
    for key in ("method", "template", "mask", "lora", "lr", "lr_scheduler", "warmup_ratio", "packing",
                "gradient_checkpointing", "truncation", "weight_decay", "max_grad_norm"):
        assert ran[key] == cfg.model_dump()[key], key
    assert meta["template"] == cfg.template and meta["method"] == cfg.method
    weights = "adapter_model.safetensors" if cfg.method != "full" else "model.safetensors"
    assert (out / weights).is_file()


@pytest.mark.parametrize("name,kind", ACCELERATE_CONFIGS.items())
def test_shipped_accelerate_configs_are_valid_and_leave_accumulation_to_camelid(name, kind, capsys):
    from accelerate.commands.config.config_args import load_config_from_file

    assert main(["train", "--config-path", name]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(CONFIG_DIR / f"{name}.yaml")
    c = load_config_from_file(path)
    assert c.distributed_type.value == kind and c.mixed_precision == "bf16"
    if kind == "DEEPSPEED":
        assert c.deepspeed_config["gradient_accumulation_steps"] == 1  # camelid accumulates to global_batch_size
        assert c.deepspeed_config["gradient_clipping"] == TrainConfig().max_grad_norm
        assert c.deepspeed_config["zero_stage"] == int(name[-1])
    else:
        assert c.fsdp_config["fsdp_version"] == 2 and c.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def test_cli_errors_are_one_line(capsys):
    assert main(["train", "lora.r=x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("camelid: error: settings: field 'lora.r':")
    assert main(["train", "no_such_config.yaml"]) == 1
    assert "no such config file" in capsys.readouterr().err
    assert main(["train"]) == 1
    assert "no training data" in capsys.readouterr().err
