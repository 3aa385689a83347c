"""End to end on the embedded model: `camelid train` on a 30-row Alpaca file, then the model stops after answering."""

from __future__ import annotations

import json

import pytest

from camelid.cli import main


@pytest.mark.slow
def test_the_trained_embedded_model_stops_after_its_answer(alpaca_30, tmp_path):
    from camelid.models import Sampling, load_model

    out = tmp_path / "run"
    assert main(["train", f"data={alpaca_30}", f"output_dir={out}", "method=lora", "lr=2e-3", "max_steps=10",
                 "global_batch_size=8", "micro_batch_size=8", "warmup_ratio=0", "lora.dropout=0"]) == 0
    meta = json.loads((out / "camelid.json").read_text())
    assert meta["template"] == "alpaca" and meta["base_model"] == "embedded" and meta["final_loss"] < 1.5
    greedy = Sampling(temperature=0, max_tokens=48)
    rows = json.loads(alpaca_30.read_text())
    asks = [[{"role": "user", "content": r["instruction"], **({"input": r["input"]} if r["input"] else {})}]
            for r in rows[:4]]
    base = load_model("hf:embedded", template="alpaca").chat(asks[0], greedy)
    trained = load_model(f"hf:{out}")
    assert trained.template.name == "alpaca"  # from camelid.json, not passed
    for ask, row in zip(asks, rows):
        c = trained.chat(ask, greedy)
        assert c.finish_reason == "stop" and c.completion_tokens <= 8, (ask, c)
        assert c.text.strip() == row["output"]
    assert base.completion_tokens > 8  # the base model does not stop there on its own
