"""Masks, truncation, mismatch counting, packing and batch planning."""

from __future__ import annotations

import json

import pytest

from camelid.core.templates import get_template
from camelid.core.tokenize import IGNORE_INDEX
from camelid.data.examples import (Example, build_examples, collate, encode_record, micro_batches, plan_steps, read_files,
                                steps_per_epoch)

CHAT = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6."}]
ALPACA = [{"role": "user", "content": "Name a color.", "input": "warm"},
          {"role": "assistant", "content": "Red, like a fire at night."}]


def _tmpl(tok, name="vicuna_v1.1"):
    return get_template(name, tok.chat_template, tok.bos_token, tok.eos_token)


def _trained_text(tok, ids, labels):
    return tok.decode([i for i, l in zip(ids, labels) if l != IGNORE_INDEX])


@pytest.mark.parametrize("mask,expected", [("assistant", " 4.<|im_end|> 6.<|im_end|>"), ("last", " 6.<|im_end|>")])
def test_masks_train_the_chosen_turns_and_always_their_eos(tokenizer, mask, expected):
    ids, labels, info = encode_record(tokenizer, _tmpl(tokenizer), CHAT, mask)
    assert _trained_text(tokenizer, ids, labels) == expected
    assert info == {"truncated": False, "cut_turns_untrained": 0, "cut_without_eos": 0, "mismatch": None}


def test_mask_all_trains_prompts_too(tokenizer):
    ids, labels, _ = encode_record(tokenizer, _tmpl(tokenizer), CHAT, "all")
    assert labels == ids


def test_a_record_without_an_answer_is_dropped_and_counted(tokenizer):
    convs = [{"id": "ok", "messages": ALPACA}, {"id": "question-only", "messages": ALPACA[:1]}]
    examples, stats = build_examples(convs, tokenizer, _tmpl(tokenizer, "alpaca"))
    assert [e.id for e in examples] == ["ok"]
    assert stats.records == 2 and stats.kept == 1 and stats.dropped_no_trained_tokens == 1
    assert any("question-only" in p for p in stats.problems())


def test_truncation_never_trains_a_cut_answer_by_default_and_counts_it(tokenizer):
    t = _tmpl(tokenizer, "alpaca")
    full, _, _ = encode_record(tokenizer, t, ALPACA)
    cut = len(full) - 3  # inside the answer: its EOS falls off
    ids, labels, info = encode_record(tokenizer, t, ALPACA, max_length=cut)
    assert len(ids) == cut and all(l == IGNORE_INDEX for l in labels)
    assert info["truncated"] and info["cut_turns_untrained"] == 1
    examples, stats = build_examples([{"id": "long", "messages": ALPACA}], tokenizer, t, max_length=cut)
    assert examples == [] and stats.truncated == 1 and stats.dropped_no_trained_tokens == 1
    # keep: Stanford's behaviour, trained without EOS, and said so
    ids, labels, info = encode_record(tokenizer, t, ALPACA, max_length=cut, truncation="keep")
    assert info["cut_without_eos"] == 1 and tokenizer.eos_token_id not in [l for l in labels if l != IGNORE_INDEX]
    _, stats = build_examples([{"id": "long", "messages": ALPACA}], tokenizer, t, max_length=cut, truncation="keep")
    assert stats.truncated_without_eos == 1 and "WITHOUT their EOS" in " ".join(stats.problems())


def test_a_cut_in_a_later_turn_keeps_the_earlier_complete_turns(tokenizer):
    t = _tmpl(tokenizer)
    full, _, _ = encode_record(tokenizer, t, CHAT)
    ids, labels, info = encode_record(tokenizer, t, CHAT, max_length=len(full) - 1)
    assert _trained_text(tokenizer, ids, labels) == " 4.<|im_end|>"
    assert info["cut_turns_untrained"] == 1


def test_tokenization_mismatch_is_detected_and_counted(embedded_dir):
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_dir)
    tok.backend_tokenizer.normalizer = normalizers.Lowercase()  # decoded text no longer equals the rendered text
    examples, stats = build_examples([{"id": "r1", "messages": ALPACA}], tok, _tmpl(tok, "alpaca"))
    assert stats.tokenization_mismatch == 1 and len(examples) == 1
    assert "TOKENIZATION MISMATCH" in stats.problems()[0] and "r1" in stats.problems()[0]


def test_the_embedded_tokenizer_round_trips_every_template(tokenizer):
    for name in ("alpaca", "vicuna_v1.1", "chatml", "tokenizer", "llama-2"):
        msgs = ALPACA if name == "alpaca" else CHAT
        _, stats = build_examples([{"id": "x", "messages": msgs}], tokenizer, _tmpl(tokenizer, name))
        assert stats.tokenization_mismatch == 0, (name, stats.examples)


def test_packing_restarts_positions_and_never_predicts_across_sequences():
    a = Example("a", [1, 2, 3], [IGNORE_INDEX, 2, 3])
    b = Example("b", [4, 5], [4, 5])  # mask "all": its first token is a label, but nothing before it predicts it
    batch = collate([a, b], packing=True, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["targets"].tolist() == [[2, 3, IGNORE_INDEX, 5, IGNORE_INDEX]]
    assert "attention_mask" not in batch
    padded = collate([a, b], packing=False, pad_id=0)
    assert padded["targets"].tolist() == [[2, 3, IGNORE_INDEX], [5, IGNORE_INDEX, IGNORE_INDEX]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def _examples(lengths):
    return [Example(str(i), list(range(n)), list(range(n))) for i, n in enumerate(lengths)]


def test_step_plan_depends_on_the_global_batch_only():
    ex = _examples([5, 9, 3, 7, 2, 8, 4, 6, 1, 10, 11])
    steps, left = plan_steps(ex, epoch=0, seed=1, global_batch=4, world_size=1, group_by_length=True)
    assert [len(s) for s in steps] == [4, 4, 3] and left == 0
    assert sorted(i for s in steps for i in s) == list(range(11))
    again, _ = plan_steps(ex, epoch=0, seed=1, global_batch=4, world_size=1, group_by_length=True)
    assert again == steps
    assert plan_steps(ex, epoch=1, seed=1, global_batch=4, world_size=1, group_by_length=True)[0] != steps
    # two processes: the last step keeps an even number, the odd one out is counted
    steps2, left2 = plan_steps(ex, epoch=0, seed=1, global_batch=4, world_size=2, group_by_length=True)
    assert steps2[:2] == steps[:2] and len(steps2[-1]) == 2 and left2 == 1
    assert all(len(ex[a].input_ids) >= len(ex[b].input_ids) for st in steps for a, b in zip(st, st[1:]))
    assert steps_per_epoch(11, 4, 1) == 3 and steps_per_epoch(11, 4, 2) == 3 and steps_per_epoch(9, 4, 2) == 2


def test_micro_batches_split_a_step_over_processes_without_overlap():
    step = list(range(8))
    shares = [micro_batches(step, r, 2, 2) for r in range(2)]
    assert shares == [[[0, 2], [4, 6]], [[1, 3], [5, 7]]]
    assert micro_batches(step, 0, 1, 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_training_files_in_any_format_become_conversations(tmp_path, alpaca_30):
    sg = tmp_path / "sg.json"
    sg.write_text(json.dumps([{"id": "c1", "conversations": [{"from": "human", "value": "Hi"},
                                                               {"from": "gpt", "value": "Hello"}]}]))
    convs = read_files([alpaca_30, sg])
    assert len(convs) == 31
    assert convs[0]["id"] == "alpaca_30.json#0" and convs[-1]["id"] == "c1"
    assert convs[-1]["messages"][1] == {"role": "assistant", "content": "Hello"}


def _runs(labels):
    """(start, end) of each contiguous trained run: one assistant turn, its EOS last."""
    out, start = [], None
    for i, l in enumerate(labels + [IGNORE_INDEX]):
        if l != IGNORE_INDEX and start is None:
            start = i
        elif l == IGNORE_INDEX and start is not None:
            out.append((start, i - 1))
            start = None
    return out


@pytest.mark.parametrize("name", ["vicuna_v1.1", "tokenizer", "alpaca"])
def test_every_cut_position_untrains_exactly_the_turns_whose_eos_fell_off(tokenizer, name):
    # reference: FastChat's/Stanford's truncation is `labels[:max_length]` of the full encoding (what `keep` does);
    # drop_partial must differ from it only on a turn that starts before the cut and ends (EOS) at or after it.
    # A cut right after a turn's EOS (issue 16, item 1) leaves that turn whole and trained.
    t = _tmpl(tokenizer, name)
    conv = ALPACA if name == "alpaca" else CHAT
    full, full_labels, _ = encode_record(tokenizer, t, conv)
    runs = _runs(full_labels)
    assert len(runs) == (1 if name == "alpaca" else 2)
    right_after_eos = 0
    for cut in range(1, len(full)):
        ids, keep, info = encode_record(tokenizer, t, conv, max_length=cut, truncation="keep")
        assert ids == full[:cut] and keep == full_labels[:cut]
        lost = [(s, e) for s, e in runs if s < cut <= e]
        assert info["cut_without_eos"] == len(lost)
        _, drop, info = encode_record(tokenizer, t, conv, max_length=cut)
        want = list(full_labels[:cut])
        for s, _ in lost:
            want[s:] = [IGNORE_INDEX] * (cut - s)
        assert drop == want and info["cut_turns_untrained"] == len(lost)
        if any(e == cut - 1 for _, e in runs):
            right_after_eos += 1
            assert drop[-1] == full[cut - 1] and info == {**info, "cut_turns_untrained": 0}
    assert right_after_eos == len(runs) - (0 if runs[-1][1] < len(full) - 1 else 1)
