"""Fixtures for training tests: a tiny random-init Llama with the embedded tokenizer (fast), and small data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
ALPACA_30 = DATA / "alpaca_30.json"


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    from camelid.models.checkpoint import embedded_hf_dir

    return embedded_hf_dir()


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_dir)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, embedded_dir, tokenizer) -> Path:
    """A 2-layer, 64-wide Llama (seeded random init) with the embedded tokenizer: a real model, fast on CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def alpaca_30() -> Path:
    return ALPACA_30


@pytest.fixture()
def short_alpaca(tmp_path) -> Path:
    """The first 8 fixture rows (short answers), for runs that must overfit quickly."""
    rows = json.loads(ALPACA_30.read_text())[:8]
    p = tmp_path / "alpaca_8.json"
    p.write_text(json.dumps(rows))
    return p


def tiny_config(model_dir: Path, data: Path, out: Path, **kw):
    """A config for the tiny model that runs in seconds (full fine-tuning, no dropout, fp32)."""
    from camelid.train.config import load_config

    fields = dict(model=f"hf:{model_dir}", data=[str(data)], output_dir=str(out), method="full", lr=1e-3,
                  micro_batch_size=4, global_batch_size=8, max_steps=4, warmup_ratio=0.0, max_length=128,
                  precision="fp32", seed=0)
    fields.update(kw)
    return load_config(None, [], **fields)
