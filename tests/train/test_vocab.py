"""Vocabulary extension: fewer tokens per Korean character, every old id and all English tokenization unchanged,
and a model with the extended tokenizer trains (LoRA + full embeddings), saves, reloads and chats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from camelid.cli import main
from camelid.data.texts import read_texts
from camelid.train.vocab import (EXTENSION_FILE, charset, extend_tokenizer, lora_embedding_kwargs,
                                 lora_modules_to_save, resize_embeddings, ties_embeddings, token_stats, token_text,
                                 train_only_embeddings)

ROOT = Path(__file__).resolve().parents[2]
KO_CORPUS = ROOT / "src" / "camelid" / "train" / "data" / "ko_corpus.txt"
BENCH = ROOT / "bench" / "data"


@pytest.fixture(scope="module")
def base_tok():
    from camelid.models.checkpoint import load_tokenizer, tokenizer_dir

    return load_tokenizer(tokenizer_dir("embedded"))


@pytest.fixture(scope="module")
def ko_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "ko"
    extend_tokenizer("embedded", [KO_CORPUS], 8000, out, coverage=charset("hangul"))
    return out


@pytest.fixture(scope="module")
def ko_tok(ko_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ko_dir)


def test_extension_cuts_korean_tokens_per_character_by_60_percent_on_held_out_text(base_tok, ko_tok):
    held = (BENCH / "ko_heldout.txt").read_text(encoding="utf-8")
    assert not set(held.split("\n\n")) & set(KO_CORPUS.read_text(encoding="utf-8").split("\n\n"))
    before, after = token_stats(base_tok, held), token_stats(ko_tok, held)
    assert before["tokens_per_char"] > 1.9  # the embedded tokenizer spends ~2 tokens per Korean character
    assert after["tokens_per_char"] <= 0.4 * before["tokens_per_char"]
    assert ko_tok.decode(ko_tok(held, add_special_tokens=False).input_ids) == held


def test_extension_also_cuts_tokens_on_the_kullm_translation(base_tok, ko_tok, shared_data):
    texts = read_texts(shared_data / "kullm" / "user_oriented_instructions_eval_ko.jsonl")
    ko = "\n".join(t for t in texts if any("\uac00" <= c <= "\ud7a3" for c in t))
    assert token_stats(ko_tok, ko)["tokens"] <= 0.45 * token_stats(base_tok, ko)["tokens"]


def test_every_old_token_keeps_its_id_and_merge_rank(base_tok, ko_tok):
    old = json.loads(base_tok.backend_tokenizer.to_str())["model"]
    new = json.loads(ko_tok.backend_tokenizer.to_str())["model"]
    assert all(new["vocab"][t] == i for t, i in old["vocab"].items())
    assert new["merges"][: len(old["merges"])] == old["merges"]
    assert sorted(set(new["vocab"].values()) - set(old["vocab"].values())) == list(range(len(base_tok), len(ko_tok)))
    assert ko_tok.convert_ids_to_tokens(list(range(17))) == base_tok.convert_ids_to_tokens(list(range(17)))


def test_english_code_and_punctuation_tokenize_exactly_as_before(base_tok, ko_tok):
    en = (BENCH / "en_mixed.txt").read_text(encoding="utf-8")
    assert ko_tok(en).input_ids == base_tok(en).input_ids
    # every base token's own text (all scripts the base knows, Korean pieces included) is cut as before
    strings = [s for s in map(token_text, json.loads(base_tok.backend_tokenizer.to_str())["model"]["vocab"])
               if "\ufffd" not in s]
    assert ko_tok(strings, add_special_tokens=False).input_ids == base_tok(strings, add_special_tokens=False).input_ids


def test_english_eval_answers_tokenize_exactly_as_before(base_tok, ko_tok, shared_data):
    rows = json.loads((shared_data / "alpaca_eval" / "example_outputs.json").read_text(encoding="utf-8"))
    text = "\n".join(r["instruction"] + "\n" + r["output"] for r in rows[:300])
    assert ko_tok(text).input_ids == base_tok(text).input_ids


def test_extension_is_deterministic_and_records_what_it_did(ko_dir, tmp_path):
    again = tmp_path / "again"
    extend_tokenizer("embedded", [KO_CORPUS], 8000, again, coverage=charset("hangul"))
    assert (again / "tokenizer.json").read_bytes() == (ko_dir / "tokenizer.json").read_bytes()
    info = json.loads((ko_dir / EXTENSION_FILE).read_text(encoding="utf-8"))
    assert info["base"] == "embedded" and info["base_vocab_size"] == 49152
    assert info["vocab_size"] == 49152 + info["added_tokens"] and info["corpus"][0]["sha256"]
    assert all(len(x.strip()) > 1 for x in info["examples"])


def test_corpus_text_fields_are_read_from_alpaca_sharegpt_and_openai_files(tmp_path):
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"instruction": "번역하세요", "input": "hello", "output": "안녕"}]), "utf-8")
    sharegpt = tmp_path / "s.json"
    sharegpt.write_text(json.dumps([{"id": "x1", "conversations": [{"from": "human", "value": "질문"},
                                                                     {"from": "gpt", "value": "답변"}]}]), "utf-8")
    openai = tmp_path / "o.jsonl"
    openai.write_text(json.dumps({"messages": [{"role": "user", "content": "하나"},
                                               {"role": "assistant", "content": "둘"}]}) + "\n", "utf-8")
    assert read_texts(alpaca) == ["번역하세요", "hello", "안녕"]
    assert read_texts(sharegpt) == ["질문", "답변"]
    assert read_texts(openai) == ["하나", "둘"]


def test_cli_extends_and_reports_stats(tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["tokenizer", "extend", "--corpus", str(KO_CORPUS), "--add", "500", "-o", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["added_tokens"] == 500 and (out / "tokenizer.json").is_file()
    assert main(["tokenizer", "stats", "--tokenizer", str(out), str(BENCH / "ko_heldout.txt")]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["base"] == "embedded" and stats["after"]["tokens_per_char"] < stats["before"]["tokens_per_char"]


def test_cli_rejects_a_corpus_with_nothing_to_add_and_missing_files(tmp_path, capsys):
    en = tmp_path / "en.txt"
    en.write_text("Only English words here, and numbers 1 2 3.\n", "utf-8")
    assert main(["tokenizer", "extend", "--corpus", str(en), "--add", "10", "-o", str(tmp_path / "x")]) == 1
    assert "no words in a non-Latin script" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["tokenizer", "extend", "--corpus", str(tmp_path / "nope.txt"), "--add", "10", "-o",
                 str(tmp_path / "y")]) == 1
    assert "no such file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- model side


def _tiny_untied_llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def test_resize_sets_new_rows_to_the_mean_of_the_old_ones_in_both_untied_matrices(base_tok, ko_tok):
    import torch

    model = _tiny_untied_llama(len(base_tok))
    emb0 = model.get_input_embeddings().weight.detach().clone()
    head0 = model.get_output_embeddings().weight.detach().clone()
    added = resize_embeddings(model, ko_tok)
    assert added == len(ko_tok) - len(base_tok)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == head.shape[0] == len(ko_tok) and not ties_embeddings(model)
    assert torch.equal(emb[: len(base_tok)], emb0) and torch.equal(head[: len(base_tok)], head0)
    assert torch.allclose(emb[len(base_tok):], emb0.mean(0).expand(added, -1), atol=1e-6)
    assert torch.allclose(head[len(base_tok):], head0.mean(0).expand(added, -1), atol=1e-6)
    assert resize_embeddings(model, ko_tok) == 0
    assert lora_modules_to_save(model) == ["model.embed_tokens", "lm_head"]
    assert lora_embedding_kwargs(model)["ensure_weight_tying"] is False


def test_with_the_base_tokenizer_each_new_row_is_the_mean_of_its_base_pieces_rows(base_tok, ko_tok):
    """Fast Vocabulary Transfer: a new token starts at the mean of the rows of the pieces the base tokenizer reads
    its text as, in both untied matrices; the special tokens and old rows are untouched."""
    import torch

    model = _tiny_untied_llama(len(base_tok))
    emb0 = model.get_input_embeddings().weight.detach().clone()
    head0 = model.get_output_embeddings().weight.detach().clone()
    added = resize_embeddings(model, ko_tok, base_tokenizer=base_tok)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert torch.equal(emb[: len(base_tok)], emb0) and torch.equal(head[: len(base_tok)], head0)
    word = ko_tok.convert_tokens_to_ids(ko_tok.tokenize(" 한국어")[0])
    assert word >= len(base_tok)
    pieces = base_tok.encode(ko_tok.decode([word]), add_special_tokens=False)
    assert len(pieces) > 1
    assert torch.allclose(emb[word], emb0[pieces].mean(0), atol=1e-6)
    assert torch.allclose(head[word], head0[pieces].mean(0), atol=1e-6)
    rows = emb[len(base_tok):]
    assert len({tuple(r.tolist()) for r in rows}) > 0.9 * added  # distinguishable, not one shared point


def test_the_base_piece_start_lowers_the_loss_of_korean_text_over_the_mean_start(embedded_dir, base_tok, ko_tok):
    """Before any training, the extended SmolLM2-135M reads held-out Korean text at a lower loss from the
    mean-of-pieces start than from the mean-of-all-rows start (Stanford's)."""
    import torch
    from transformers import AutoModelForCausalLM

    text = "서울은 한국의 수도이며, 많은 사람들이 지하철을 타고 출근합니다."
    losses = {}
    for start in ("mean", "pieces"):
        model = AutoModelForCausalLM.from_pretrained(embedded_dir, dtype=torch.float32)
        resize_embeddings(model, ko_tok, base_tokenizer=base_tok if start == "pieces" else None)
        ids = torch.tensor([ko_tok.encode(text, add_special_tokens=False)])
        with torch.no_grad():
            losses[start] = model(input_ids=ids, labels=ids).loss.item()
    print(losses)
    assert losses["pieces"] < losses["mean"], losses


def test_stage_one_trains_only_the_embedding_matrices(ko_tok):
    model = _tiny_untied_llama(100)
    resize_embeddings(model, ko_tok)
    n = train_only_embeddings(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"model.embed_tokens.weight", "lm_head.weight"} and n == 2 * len(ko_tok) * 16


def test_resize_pads_to_a_multiple(ko_tok):
    model = _tiny_untied_llama(100)
    resize_embeddings(model, ko_tok, pad_to_multiple_of=64)
    assert model.get_input_embeddings().weight.shape[0] % 64 == 0
    assert model.get_input_embeddings().weight.shape[0] >= len(ko_tok)


@pytest.mark.slow
def test_model_with_extended_tokenizer_trains_saves_reloads_and_chats(tiny_model, ko_dir, ko_tok, tmp_path):
    """Through `train(cfg)`: tokenizer (resize, mean rows), data_format text, LoRA with modules_to_save auto on a
    tied model; the run directory reloads (adapter and merged) with the extended tokenizer and chats."""
    import torch

    from camelid.models import Sampling, load_model
    from camelid.modelfiles.merge import merge_adapter
    from camelid.train.sft import train
    from tests.train.conftest import tiny_config

    out = tmp_path / "run"
    cfg = tiny_config(tiny_model, KO_CORPUS, out, tokenizer=str(ko_dir), data_format="text", mask="all",
                      method="lora", lora={"dropout": 0.0, "modules_to_save": "auto"}, lr=1e-2, max_steps=6,
                      max_length=64)
    r = train(cfg)
    old = 49152
    assert r.losses[-1] < r.losses[0] - 0.5, r.losses
    meta = json.loads((out / "camelid.json").read_text(encoding="utf-8"))
    assert meta["vocab"]["embedding_rows_added"] == len(ko_tok) - old
    assert meta["vocab"]["modules_to_save"] == ["model.embed_tokens"]
    stats = meta["data_stats"]
    assert stats["records"] == 1 and stats["kept"] >= 48 and stats["trained_tokens"] == stats["tokens"] - stats["kept"]
    conf = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
    assert conf["modules_to_save"] == ["model.embed_tokens"] and conf["ensure_weight_tying"] is True
    assert (out / EXTENSION_FILE).is_file()

    text = KO_CORPUS.read_text(encoding="utf-8")
    probe = torch.tensor([ko_tok(text[:300], add_special_tokens=False).input_ids[:32]])
    assert probe.max().item() >= old  # new tokens are in play
    chat = load_model(f"hf:{out}")
    assert len(chat.tokenizer) == len(ko_tok)
    inner = chat.model.base_model.model if hasattr(chat.model, "base_model") else chat.model
    emb = inner.get_input_embeddings().weight
    assert emb.shape[0] == len(ko_tok) and inner.get_output_embeddings().weight is emb  # tied to the trained copy
    mean = _embedding(tiny_model).mean(0)
    assert not torch.allclose(emb[old:], mean.expand(len(ko_tok) - old, -1), atol=1e-3)  # trained rows were loaded
    with torch.no_grad():
        ref = chat.model(input_ids=probe).logits
    reply = chat.chat([{"role": "user", "content": "안녕하세요"}], Sampling(temperature=0, max_tokens=4))
    assert reply.completion_tokens >= 1 and reply.prompt_tokens > 0
    del chat

    merged = merge_adapter(out, tmp_path / "merged")
    chat = load_model(f"hf:{merged}")
    assert len(chat.tokenizer) == len(ko_tok) == chat.model.get_input_embeddings().weight.shape[0]
    with torch.no_grad():
        assert torch.allclose(chat.model(input_ids=probe).logits, ref, atol=1e-4)


def _embedding(model_dir: Path):
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")["model.embed_tokens.weight"]
