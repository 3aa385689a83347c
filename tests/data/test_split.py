"""`camelid data split`: pieces at turn boundaries that fit the limit as the real template renders them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from camelid.cli import main
from camelid.core.templates import get_template
from camelid.core.tokenize import encode
from camelid.data.clean import clean_file
from camelid.data.split import PieceCounter, split_file, split_messages
from tests.data.test_clean import g, h, mixed_records, write


def roles(conv: list[dict]) -> list[str]:
    return [m["from"] for m in conv]


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> dict:
    return {"role": "assistant", "content": text}


def as_messages(rec: dict) -> list[dict]:
    if "messages" in rec:
        return [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]
    role = {"human": "user", "gpt": "assistant", "system": "system"}
    return [{"role": role[m["from"]], "content": m["value"]} for m in rec["conversations"]]


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer

    from camelid.models.checkpoint import embedded_hf_dir

    return AutoTokenizer.from_pretrained(embedded_hf_dir())


def test_cleaned_sample_with_korean_splits_into_pieces_that_all_fit(shared_data, embedded, hf_tokenizer, tmp_path):
    sample = json.loads((shared_data / "fastchat" / "dummy_conversation.json").read_text(encoding="utf-8"))
    src = write(tmp_path / "raw.json", sample + mixed_records())
    cleaned = tmp_path / "clean.json"
    cleaning = clean_file(src, cleaned)
    assert cleaning.kept == 510 and sum(cleaning.removed.values()) == 7
    out = tmp_path / "split.json"
    template = get_template("vicuna_v1.1", eos_token=embedded.eos_token)
    rep = split_file(cleaned, out, embedded, 256, template=template)
    pieces = json.loads(out.read_text(encoding="utf-8"))
    assert rep.pieces == len(pieces) == 512 and rep.conversations == 510 and not rep.invalid
    assert rep.split == 1 and rep.dropped_exchanges == 1 and rep.max_piece_tokens <= 256  # ko_1's long exchange
    for p in pieces:  # every piece re-counted: the text render with llama.cpp, and training's own encode
        conv = p["conversations"]
        assert roles(conv) == ["human", "gpt"] * (len(conv) // 2) and conv
        msgs = as_messages(p)
        text = template.render(msgs, bos_token=embedded.bos_token, eos_token=embedded.eos_token)
        assert embedded.count_tokens(text) <= 256
        assert len(encode(hf_tokenizer, template, msgs)[0]) <= 256
    ids = {p["id"] for p in pieces}
    assert {"identity_0_0", "ko_1_0", "ko_leading_gpt_0", "ko_long_0", "ko_long_1"} <= ids  # Korean survives
    ko_long = [p for p in pieces if p["id"].startswith("ko_long_")]
    assert [p["id"] for p in ko_long] == [f"ko_long_{k}" for k in range(len(ko_long))] and len(ko_long) >= 3
    original = next(r for r in mixed_records() if r["id"] == "ko_long")["conversations"]
    assert [m for p in ko_long for m in p["conversations"]] == original  # in order, nothing cut or lost


def test_an_exchange_longer_than_the_limit_is_dropped_not_cut(embedded):
    counter = PieceCounter(embedded.count_tokens, get_template("vicuna_v1.1"), eos_token=embedded.eos_token)
    huge = "word " * 300
    msgs = [u("Hi"), a("Hello!"), u(huge), a("ok"), u("Bye"), a("Goodbye!"), u("One more?"), a("Sure.")]
    pieces, dropped = split_messages(msgs, counter, 64)
    assert dropped == 1
    assert [piece for piece, _ in pieces] == [msgs[:2], msgs[4:8]]  # whole messages, the long exchange gone
    assert all(n == counter.count(piece) <= 64 for piece, n in pieces)


def test_the_real_render_shrinks_a_piece_the_estimate_let_through(embedded):
    # the model's own chat_template (Jinja), with its default system prompt
    counter = PieceCounter(embedded.count_tokens, embedded.template, embedded.bos_token, embedded.eos_token)
    msgs = [m for i in range(8) for m in (u(f"Question number {i}, please answer it."), a(f"Answer number {i}."))]
    # an estimate that thinks every message is free: only the check against the rendered text keeps pieces small
    pieces, dropped = split_messages(msgs, counter, 100, sizes=lambda m: 0)
    assert dropped == 0 and len(pieces) > 1
    assert [m for piece, _ in pieces for m in piece] == msgs
    assert all(counter.count(piece) <= 100 for piece, _ in pieces)


def test_system_message_is_repeated_in_every_piece_of_openai_jsonl(embedded, tmp_path):
    system = {"role": "system", "content": "You answer in one short sentence."}
    msgs = [system] + [m for i in range(6) for m in (u(f"Tell me fact {i} about llamas."),
                                                     a(f"Llamas are camelids, fact {i}."))]
    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps({"id": 7, "messages": msgs}) + "\n" + json.dumps({"messages": msgs[:3]}) + "\n",
                   encoding="utf-8")
    rep = split_file(src, tmp_path / "out.jsonl", embedded, 96, template=get_template("vicuna_v1.1"))
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rep.split == 1 and len(rows) == rep.pieces >= 3
    assert [r.get("id") for r in rows] == [f"7_{k}" for k in range(len(rows) - 1)] + [None]
    assert all(r["messages"][0] == system and r["messages"][1]["role"] == "user" for r in rows)
    assert [m for r in rows[:-1] for m in r["messages"][1:]] == msgs[1:]


def test_a_single_turn_template_gets_one_exchange_per_piece(embedded, tmp_path):
    src = write(tmp_path / "in.json", [{"id": "x", "conversations": [h("Hi"), g("Hello"), h("Bye"), g("Bye!")]}])
    rep = split_file(src, tmp_path / "out.json", embedded, 2048, template=get_template("alpaca"))
    out = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert rep.pieces == 2 and [p["conversations"] for p in out] == [[h("Hi"), g("Hello")], [h("Bye"), g("Bye!")]]


def test_invalid_conversations_and_unanswered_turns_are_counted(embedded, tmp_path):
    src = write(tmp_path / "in.json", [
        {"id": "ok", "conversations": [h("Hi"), g("Hello"), h("Anyone?")]},
        {"id": "bad", "conversations": [h("Hi"), h("Hi?"), g("Yes")]},
    ])
    rep = split_file(src, tmp_path / "out.json", embedded, 256)
    out = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert [p["id"] for p in out] == ["ok_0"] and out[0]["conversations"] == [h("Hi"), g("Hello")]
    assert rep.invalid == {"non_alternating": 1} and rep.trimmed_trailing_user == 1


@pytest.mark.slow
def test_cli_clean_then_split_writes_pieces_and_report(shared_data, tmp_path, capsys):
    src = write(tmp_path / "raw.json", mixed_records())
    cleaned, out, report = tmp_path / "clean.json", tmp_path / "split.json", tmp_path / "split-report.json"
    assert main(["data", "clean", str(src), "-o", str(cleaned)]) == 0
    assert main(["data", "split", str(cleaned), "-o", str(out), "--max-tokens", "128", "--template", "chatml",
                 "--report", str(report)]) == 0
    rep = json.loads(report.read_text(encoding="utf-8"))
    assert rep["template"] == "chatml" and rep["max_tokens"] == 128 and rep["max_piece_tokens"] <= 128
    assert rep["pieces"] == len(json.loads(out.read_text(encoding="utf-8")))
    assert rep["dropped_exchanges"] >= 1  # the long Korean exchanges (about 150 tokens) cannot fit 128
    assert "dropped exchanges" in capsys.readouterr().err
    assert main(["data", "split", str(Path(tmp_path / "missing.json")), "-o", str(out), "--max-tokens", "8"]) == 1


def test_a_tokenizer_prefix_bos_is_counted_unless_the_template_writes_bos(embedded):
    msgs = [u("Hi"), a("Hello")]
    for name, extra in (("chatml", 1), ("llama-2", 0)):  # llama-2 renders its own <s>, so encode adds none
        t = get_template(name)
        plain = PieceCounter(embedded.count_tokens, t, "<s>", "</s>")
        with_bos = PieceCounter(embedded.count_tokens, t, "<s>", "</s>", prefix_tokens=1)
        assert with_bos.count(msgs) == plain.count(msgs) + extra
