"""camelid's per-token loss equals a plain `model(input_ids, labels=labels).loss`, packed or padded."""

from __future__ import annotations

import pytest
import torch

from camelid.core.templates import get_template
from camelid.core.tokenize import IGNORE_INDEX
from camelid.data.examples import build_examples, collate, read_files
from camelid.train.sft import token_loss_sum


def _examples(tokenizer, alpaca_30, n):
    t = get_template("alpaca", None, tokenizer.bos_token, tokenizer.eos_token)
    examples, _ = build_examples(read_files([alpaca_30])[:n], tokenizer, t)
    return examples


def _reference(model, examples) -> float:
    """transformers' own loss on a right-padded batch (mean over trained tokens)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.tensor([e.input_ids + [0] * (width - len(e.input_ids)) for e in examples])
    labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in examples])
    att = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in examples])
    return model(input_ids=ids, attention_mask=att, labels=labels).loss.item()


@pytest.mark.parametrize("which", ["tiny", "embedded"])
def test_per_token_loss_matches_a_plain_model_call(which, tiny_model, embedded_dir, tokenizer, alpaca_30):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model if which == "tiny" else embedded_dir).eval()
    examples = _examples(tokenizer, alpaca_30, 4 if which == "tiny" else 2)
    n_trained = sum(e.n_trained for e in examples)
    with torch.no_grad():
        want = _reference(model, examples)
        packed = token_loss_sum(model, collate(examples, True, 0), "cpu").item() / n_trained
        padded = token_loss_sum(model, collate(examples, False, 0), "cpu").item() / n_trained
    assert packed == pytest.approx(want, rel=1e-5)
    assert padded == pytest.approx(want, rel=1e-5)


def test_packed_rows_only_see_their_own_sequence(tiny_model, tokenizer, alpaca_30):
    """With the KV cache on, transformers skips its packed-sequence detection and sequences attend to each other:
    the loss of the second sequence must not depend on what is packed before it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    a, b, c = _examples(tokenizer, alpaca_30, 3)
    with torch.no_grad():
        alone = token_loss_sum(model, collate([b], True, 0), "cpu").item()
        after_a = token_loss_sum(model, collate([a, b], True, 0), "cpu").item() - \
            token_loss_sum(model, collate([a], True, 0), "cpu").item()
        after_c = token_loss_sum(model, collate([c, b], True, 0), "cpu").item() - \
            token_loss_sum(model, collate([c], True, 0), "cpu").item()
    assert after_a == pytest.approx(alone, rel=1e-5) and after_c == pytest.approx(alone, rel=1e-5)
