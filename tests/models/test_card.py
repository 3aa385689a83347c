"""Model cards in the Hub's format, parsed back with `huggingface_hub.ModelCard` (the reference): a trained run, a
merged checkpoint and a GGUF export each get a README.md whose front matter names the base model, the Hub datasets,
the library, the license, the pipeline and camelid's tags; a README.md camelid did not write is never replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from camelid.cli import main
from camelid.models.card import MARK, model_card, write_model_card
from camelid.models.checkpoint import RunInfo
from camelid.models.spec import EMBEDDED_HUB_ID

hf = pytest.importorskip("huggingface_hub")

RUN = {
    "kind": "sft", "template": "alpaca", "base_model": "embedded", "method": "qlora", "mask": "assistant",
    "base_model_path": "/somewhere/SmolLM2-135M-Instruct-hf",
    "data": [{"path": "hf://datasets/tatsu-lab/alpaca/train", "sha256": "datasets:0f1e"},
             {"path": "/data/extra_rows.parquet", "sha256": "ab" * 32}],
    "config": {"epochs": 3, "lr": 0.0003, "lr_scheduler": "cosine", "warmup_ratio": 0.03, "global_batch_size": 128,
               "max_length": 256, "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj"]}},
    "data_stats": {"records": 52002, "kept": 51990, "tokens": 9_000_000, "trained_tokens": 4_000_000},
    "steps": 1218, "final_loss": 1.0423, "eval_loss": 1.1, "train_time_s": 3600.0, "precision": "bf16",
}


def card_of(directory: Path):
    """The card as the Hub reads it."""
    return hf.ModelCard.load(directory / "README.md")


def test_a_qlora_run_on_the_embedded_model_gets_the_hubs_front_matter(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    RunInfo.model_validate(RUN).write(tmp_path)
    assert write_model_card(tmp_path) == tmp_path / "README.md"
    card = card_of(tmp_path)
    d = card.data.to_dict()
    assert d["base_model"] == EMBEDDED_HUB_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert d["library_name"] == "peft" and d["license"] == "apache-2.0" and d["pipeline_tag"] == "text-generation"
    assert d["datasets"] == ["tatsu-lab/alpaca"]  # the Hub dataset; the local file only in the body
    assert {"camelid", "sft", "qlora", "lora"} <= set(d["tags"])
    assert isinstance(card.data, hf.ModelCardData)
    for fact in ("| method | qlora |", "r=8, alpha=16", "| final training loss | 1.042 |", "| records read | 52,002 |",
                 "extra_rows.parquet", "AutoPeftModelForCausalLM", "| learning rate | 0.0003 |"):
        assert fact in card.text, fact


def test_a_base_in_the_hugging_face_cache_is_named_by_its_hub_id_and_a_local_base_is_not(tmp_path):
    run = RunInfo.model_validate({**RUN, "base_model": "hf:/root/.cache/huggingface/hub/models--Qwen--Qwen2.5-0.5B/"
                                  "snapshots/abc", "base_model_path": "/root/.cache/huggingface/hub/models--Qwen--"
                                  "Qwen2.5-0.5B/snapshots/abc", "method": "full"})
    (tmp_path / "config.json").write_text("{}")
    d = hf.ModelCard(model_card(tmp_path, run)).data.to_dict()
    assert d["base_model"] == "Qwen/Qwen2.5-0.5B" and d["library_name"] == "transformers"
    assert "license" not in d  # not known: never guessed
    local = RunInfo.model_validate({**RUN, "base_model": "hf:/models/my-llama", "base_model_path": "/models/my-llama",
                                    "data": [{"path": "/d/a.json", "sha256": "00"}]})
    text = model_card(tmp_path, local)
    d = hf.ModelCard(text).data.to_dict()
    assert "base_model" not in d and "datasets" not in d
    assert "`hf:/models/my-llama`" in text  # named in the body instead


def test_a_readme_camelid_did_not_write_is_left_alone(tmp_path):
    RunInfo.model_validate(RUN).write(tmp_path)
    (tmp_path / "README.md").write_text("# my own notes\n")
    assert write_model_card(tmp_path) is None
    assert (tmp_path / "README.md").read_text() == "# my own notes\n"
    (tmp_path / "README.md").write_text(MARK + "\nold card\n")
    assert write_model_card(tmp_path) is not None and "old card" not in (tmp_path / "README.md").read_text()


# ---------------------------------------------------------------------------------------------- real runs

torch = pytest.importorskip("torch")
from tests.train.conftest import embedded_dir, tiny_config, tiny_model, tokenizer  # noqa: E402,F401 (fixtures)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model) -> Path:  # noqa: F811
    """A real run of `camelid train` (the tiny model, full fine-tuning, 2 steps)."""
    from camelid.train.sft import train

    from tests.train.conftest import ALPACA_30

    out = tmp_path_factory.mktemp("runs") / "tiny-full"
    train(tiny_config(tiny_model, ALPACA_30, out, max_steps=2))
    return out


def test_a_training_run_writes_its_model_card(full_run):
    card = card_of(full_run)
    d = card.data.to_dict()
    info = json.loads((full_run / "camelid.json").read_text())
    assert d["library_name"] == "transformers" and "full-fine-tuning" in d["tags"] and "camelid" in d["tags"]
    assert "base_model" not in d  # a local random-init checkpoint has no Hub id
    assert f"| final training loss | {info['final_loss']:.4g} |" in card.text
    assert "alpaca_30.json" in card.text and "AutoModelForCausalLM" in card.text


def test_gguf_exports_get_the_gguf_tag_and_llama_cpp_usage(full_run, tmp_path, capsys):
    assert main(["export", str(full_run), "--gguf", "-o", str(tmp_path / "gguf" / "tiny.gguf")]) == 0
    card = card_of(tmp_path / "gguf")
    d = card.data.to_dict()
    assert "gguf" in d["tags"] and "library_name" not in d
    assert "llama-cli -m tiny.gguf" in card.text and "ollama create" in card.text
    assert "| final training loss |" in card.text  # the run's facts travel with the export
    # into the run itself: the run's card gains the GGUF
    assert main(["export", str(full_run), "--gguf"]) == 0
    d = card_of(full_run).data.to_dict()
    assert d["library_name"] == "transformers" and "gguf" in d["tags"]
    # into a directory that holds other files: no card, and a line that says so
    other = tmp_path / "work"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["export", str(full_run), "--gguf", "-o", str(other / "x.gguf")]) == 0
    assert not (other / "README.md").exists()
    assert "no model card" in capsys.readouterr().err


def test_a_merged_checkpoint_gets_a_transformers_card_naming_the_embedded_base(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from camelid.modelfiles.merge import merge_adapter
    from camelid.models.checkpoint import embedded_hf_dir

    base = embedded_hf_dir()
    run = tmp_path / "lora-run"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(run)
    cfg = json.loads((run / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (run / "adapter_config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (run / f).write_bytes((base / f).read_bytes())
    RunInfo.model_validate({**RUN, "method": "lora", "base_model_path": str(base)}).write(run)
    peft_card = (run / "README.md").read_text()  # PEFT's unfilled template, base_model a local path
    assert hf.ModelCard(peft_card).data.to_dict()["base_model"] == str(base)
    assert write_model_card(run) == run / "README.md"  # replaced: it is nobody's writing
    d = card_of(run).data.to_dict()
    assert (d["base_model"], d["library_name"]) == (EMBEDDED_HUB_ID, "peft")
    out = merge_adapter(run, tmp_path / "merged")
    d = card_of(out).data.to_dict()
    assert d["base_model"] == EMBEDDED_HUB_ID and d["library_name"] == "transformers"
    assert d["license"] == "apache-2.0" and {"merged", "lora", "sft"} <= set(d["tags"])
