"""`camelid data render`: the text training sees, with the trained tokens marked."""

from __future__ import annotations

import json

from camelid.cli import main
from camelid.core.templates import get_template
from camelid.data.examples import encode_record
from tests.core.test_templates import CONVERSATIONS, fastchat_vicuna_v11


def _sharegpt(path, conversations):
    rows = []
    for i, msgs in enumerate(conversations):
        turns = [{"from": {"user": "human", "assistant": "gpt", "system": "system"}[m["role"]], "value": m["content"]}
                 for m in msgs]
        rows.append({"id": f"c{i}", "conversations": turns})
    path.write_text(json.dumps(rows))
    return path


def test_render_vicuna_matches_fastchat_exactly_with_trained_spans_marked(tmp_path, capsys, tokenizer):
    convs = [c for c in CONVERSATIONS if c[0]["content"]]  # ShareGPT has no empty system turn
    data = _sharegpt(tmp_path / "sg.json", convs)
    assert main(["data", "render", str(data), "--template", "vicuna_v1.1", "-n", "10", "--no-color"]) == 0
    lines = capsys.readouterr().out.split("\n")[:-1]
    assert len(lines) == sum(1 + c_text.count("\n") for c_text in
                             (fastchat_vicuna_v11(c, tokenizer.eos_token) for c in convs))
    text = "\n".join(lines)
    want = "\n".join(fastchat_vicuna_v11(c, tokenizer.eos_token) for c in convs)
    assert text.replace("\u27e6", "").replace("\u27e7", "") == want
    # exactly the assistant answers (with their EOS) are marked
    assert "ASSISTANT:\u27e6 Hello! How can I help?<|im_end|>\u27e7" in text
    assert "\u27e6" not in text.split("ASSISTANT:")[0]


def test_render_json_gives_the_training_ids_and_labels(tmp_path, capsys, tokenizer, alpaca_30):
    assert main(["data", "render", str(alpaca_30), "--template", "alpaca", "-n", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == ["alpaca_30.json#0", "alpaca_30.json#1"]
    t = get_template("alpaca", None, tokenizer.bos_token, tokenizer.eos_token)
    ids, labels, _ = encode_record(tokenizer, t, [{"role": "user", "content": "What is the capital of France?"},
                                                  {"role": "assistant", "content": "Paris."}])
    assert rows[0]["input_ids"] == ids and rows[0]["labels"] == labels


def test_render_highlights_in_colour_when_asked(tmp_path, capsys, alpaca_30):
    assert main(["data", "render", str(alpaca_30), "--template", "alpaca", "-n", "1", "--color"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" in out and "\u27e6" not in out and "Paris." in out
