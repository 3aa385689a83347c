"""Staged configs: `camelid train kollama2_two_stage` extends the tokenizer, trains the embeddings on raw text, then
instruction-tunes with LoRA + full embeddings in curriculum order, in one command; finished stages are skipped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from camelid.cli import main
from camelid.core.io import CamelidError
from camelid.train.config import CONFIG_DIR, load_config
from camelid.data.examples import Example, plan_steps
from camelid.train.multistage import load_stages

SHIPPED = CONFIG_DIR / "kollama2_two_stage.yaml"
KO_DATA = CONFIG_DIR.parent / "data"


def test_the_shipped_two_stage_config_validates_every_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = load_stages("kollama2_two_stage")
    assert [s.name for s in run.stages] == ["embeddings", "instructions"]
    one, two = (s.config for s in run.stages)
    assert run.tokenizer.output == "runs/ko-tokenizer" and Path(run.tokenizer.corpus[0]).is_file()
    assert (one.tokenizer, one.data_format, one.trainable, one.method) == ("runs/ko-tokenizer", "text",
                                                                           ["embeddings"], "full")
    assert Path(one.data[0]) == KO_DATA / "ko_corpus.txt"  # inputs: beside the YAML
    assert (two.model, two.output_dir) == ("runs/ko-stage1", "runs/ko-stage2")  # outputs: the working directory
    assert two.lora.modules_to_save == "auto" and (two.curriculum.rule, two.curriculum.field) == \
        ("translation_first", "task")
    routed = load_stages("kollama2_two_stage", ["max_steps=2", "embeddings.lr=1e-3", "tokenizer.add=10"])
    assert [s.config.max_steps for s in routed.stages] == [2, 2]
    assert [s.config.lr for s in routed.stages] == [1e-3, 3e-4] and routed.tokenizer.add == 10
    with pytest.raises(CamelidError, match="staged config"):
        load_config("kollama2_two_stage")
    with pytest.raises(CamelidError, match="stage instructions: field 'curriculum.rule'"):
        load_stages("kollama2_two_stage", ["instructions.curriculum.rule=alphabetical"])


@pytest.mark.parametrize("bad,message", [
    ({"trainable": ["embeddings"], "method": "lora"}, "trainable applies to method full"),
    ({"method": "full", "lora": {"modules_to_save": "auto"}}, "modules_to_save applies to adapter methods"),
    ({"curriculum": {"rule": "field"}}, "needs curriculum.field"),
    ({"curriculum": {"rule": "length"}, "data_format": "text"}, "curriculum orders instruction records"),
    ({"data_format": "csv"}, "data_format"),
])
def test_bad_vocabulary_and_curriculum_settings_are_refused(bad, message):
    with pytest.raises(CamelidError, match=message):
        load_config(None, [], **bad)


def test_a_curriculum_plan_keeps_the_record_order_every_epoch():
    ex = [Example(str(i), [1] * (i % 5 + 2), [1] * (i % 5 + 2)) for i in range(10)]
    for epoch in (0, 1):
        steps, left = plan_steps(ex, epoch, seed=3, global_batch=4, world_size=1, group_by_length=True, ordered=True)
        assert steps == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and left == 0
    assert plan_steps(ex, 0, 3, 4, 1, True)[0] != steps  # without a curriculum: shuffled and grouped


@pytest.mark.slow
def test_two_stage_config_runs_in_one_command_and_skips_finished_stages(tiny_model, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from camelid.models import Sampling, load_model

    # the shipped YAML beside a copy of its data (records reversed, so the curriculum has work to do)
    (tmp_path / "configs").mkdir()
    (tmp_path / "data").mkdir()
    shutil.copy(SHIPPED, tmp_path / "configs" / SHIPPED.name)
    shutil.copy(KO_DATA / "ko_corpus.txt", tmp_path / "data" / "ko_corpus.txt")
    lines = (KO_DATA / "ko_instructions.jsonl").read_text(encoding="utf-8").splitlines()
    (tmp_path / "data" / "ko_instructions.jsonl").write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = ["train", str(tmp_path / "configs" / SHIPPED.name), "tokenizer.add=300", "tokenizer.charsets=[]",
            f"embeddings.model=hf:{tiny_model}", "embeddings.max_length=64", "embeddings.global_batch_size=8",
            "embeddings.lr=1e-2", "instructions.global_batch_size=8",
            "instructions.lora.dropout=0", "instructions.lr=1e-2", "max_steps=3", "micro_batch_size=4",
            "precision=fp32", "seed=0"]
    assert main(args) == 0
    tok_dir, s1, s2 = work / "runs" / "ko-tokenizer", work / "runs" / "ko-stage1", work / "runs" / "ko-stage2"
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert len(tok) == 49152 + 300

    # stage 1: only the (tied) embedding matrix moved, grown to the extended tokenizer
    before, after = load_file(tiny_model / "model.safetensors"), load_file(s1 / "model.safetensors")
    emb = "model.embed_tokens.weight"
    assert after[emb].shape[0] == len(tok) and not after[emb][:49152].equal(before[emb])
    assert all(after[k].equal(v) for k, v in before.items() if k != emb), "stage 1 changed more than embeddings"
    m1 = json.loads((s1 / "camelid.json").read_text(encoding="utf-8"))
    assert m1["vocab"]["embedding_rows_added"] == 300 and m1["config"]["trainable"] == ["embeddings"]
    assert m1["trainable_params"] == len(tok) * 64 and m1["steps"] == 3

    # stage 2: LoRA on stage 1, embeddings saved fully (modules_to_save auto), data in curriculum order
    conf = json.loads((s2 / "adapter_config.json").read_text(encoding="utf-8"))
    assert conf["modules_to_save"] == ["model.embed_tokens"] and conf["base_model_name_or_path"] == str(s1)
    saved = load_file(s2 / "adapter_model.safetensors")
    assert saved["base_model.model.model.embed_tokens.weight"].shape[0] == len(tok)
    m2 = json.loads((s2 / "camelid.json").read_text(encoding="utf-8"))
    assert m2["vocab"]["embedding_rows_added"] == 0 and m2["vocab"]["modules_to_save"] == ["model.embed_tokens"]
    assert m2["data_stats"]["kept"] == 24 and m2["steps"] == 3
    order = m2["curriculum"]
    assert (order["rule"], order["field"]) == ("translation_first", "task")
    assert [(s["name"], s["size"]) for s in order["stages"]] == [("translation", 8), ("other", 16)]
    assert order["first_ids"] == [f"ko-{i:03d}" for i in range(7, -1, -1)] + ["ko-023", "ko-022"]
    assert (s2 / "tokenizer.json").is_file() and len(AutoTokenizer.from_pretrained(s2)) == len(tok)
    chat = load_model(f"hf:{s2}")  # what `camelid chat --model hf:runs/ko-stage2` loads
    assert len(chat.tokenizer) == len(tok) and chat.template.name == "alpaca_ko"
    assert chat.chat([{"role": "user", "content": "안녕하세요"}], Sampling(temperature=0, max_tokens=2)).prompt_tokens
    del chat

    # the same command again: every stage is finished, nothing is retrained
    stamp = (s2 / "camelid.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "already holds an extended tokenizer" in err and err.count("skipped") == 2
    assert (s2 / "camelid.json").stat().st_mtime_ns == stamp


def test_a_run_with_tokenizer_and_curriculum_resumes_exactly_and_refuses_another_tokenizer(tiny_model, alpaca_30,
                                                                                            tmp_path):
    from camelid.train.sft import train
    from camelid.train.vocab import extend_tokenizer
    from tests.train.conftest import tiny_config

    tok = tmp_path / "tok"
    extend_tokenizer("embedded", [KO_DATA / "ko_corpus.txt"], 100, tok)
    kw = dict(tokenizer=str(tok), method="lora", lora={"dropout": 0.0, "r": 4, "alpha": 8, "modules_to_save": "auto"},
              curriculum={"rule": "length"}, lr=1e-2, max_steps=4, save_steps=2, global_batch_size=4,
              micro_batch_size=2)
    whole = train(tiny_config(tiny_model, alpaca_30, tmp_path / "whole", **kw))
    ckpt = tmp_path / "whole" / "checkpoints" / "step-000002"
    killed = tmp_path / "killed"
    shutil.copytree(ckpt, killed / "checkpoints" / ckpt.name)
    resumed = train(tiny_config(tiny_model, alpaca_30, killed, **kw))
    assert resumed.losses == pytest.approx(whole.losses[2:], abs=1e-6)
    # the same path now holds another extension: English data tokenizes alike, the fingerprint still differs
    shutil.rmtree(killed)
    shutil.copytree(ckpt, killed / "checkpoints" / ckpt.name)
    extend_tokenizer("embedded", [KO_DATA / "ko_corpus.txt"], 120, tok)
    with pytest.raises(CamelidError, match="the tokenized training data"):
        train(tiny_config(tiny_model, alpaca_30, killed, **kw))
