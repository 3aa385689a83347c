"""The chunked cross-entropy equals the full-vocabulary one: loss and every gradient, for each kind of head."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from camelid.core.tokenize import IGNORE_INDEX
from camelid.train.loss import checkpointed_cross_entropy, linear_cross_entropy
from camelid.train.sft import token_loss_sum


def full(h, w, b, t):
    return torch.nn.functional.cross_entropy(torch.nn.functional.linear(h, w, b).float(), t, reduction="sum")


@pytest.mark.parametrize("rows", [1, 7, 64, 1000])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_linear_cross_entropy_equals_the_full_one_with_gradients(rows, bias):
    g = torch.Generator().manual_seed(rows)
    h = torch.randn(130, 24, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(500, 24, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(500, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    t = torch.randint(0, 500, (130,), generator=g)
    params = [x for x in (h, w, b) if x is not None]
    ref = torch.nn.functional.cross_entropy(torch.nn.functional.linear(h, w, b), t, reduction="sum")
    ref_grads = torch.autograd.grad(ref * 0.37, params)
    got = linear_cross_entropy(h, w, b, t, rows)
    got_grads = torch.autograd.grad(got * 0.37, params)
    assert torch.allclose(got, ref, rtol=1e-12)
    for a, r in zip(got_grads, ref_grads):
        assert a.dtype == r.dtype and torch.allclose(a, r, rtol=1e-9, atol=1e-9)


def test_frozen_head_gets_no_gradient_and_no_grad_mode_only_sums():
    h = torch.randn(20, 8, requires_grad=True)
    w = torch.randn(50, 8)
    t = torch.randint(0, 50, (20,))
    loss = linear_cross_entropy(h, w, None, t, 3)
    loss.backward()
    assert w.grad is None and h.grad is not None
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(h, w, None, t, 3), full(h, w, None, t), rtol=1e-5)


def test_checkpointed_chunks_equal_the_full_loss_for_any_head():
    head = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 40))
    h = torch.randn(33, 8, requires_grad=True)
    t = torch.randint(0, 40, (33,))
    ref = torch.nn.functional.cross_entropy(head(h), t, reduction="sum")
    ref_grads = torch.autograd.grad(ref, [h, *head.parameters()])
    got = checkpointed_cross_entropy(head, h, t, 5)
    got_grads = torch.autograd.grad(got, [h, *head.parameters()])
    assert torch.allclose(got, ref, rtol=1e-5)
    for a, r in zip(got_grads, ref_grads):
        assert torch.allclose(a, r, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------ through a model


def tiny_model(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied, use_cache=False)
    return LlamaForCausalLM(cfg).double()


def batch(packed: bool):
    torch.manual_seed(1)
    lens = [9, 14, 6]
    ids = [torch.randint(0, 300, (n,)).tolist() for n in lens]
    tgt = [[IGNORE_INDEX] * 3 + x[4:] + [2] for x in ids]  # prompt tokens untrained, answer shifted
    if packed:
        return {"input_ids": torch.tensor([sum(ids, [])]), "targets": torch.tensor([sum(tgt, [])]),
                "position_ids": torch.tensor([[p for n in lens for p in range(n)]])}
    w = max(lens)
    return {"input_ids": torch.tensor([x + [0] * (w - len(x)) for x in ids]),
            "targets": torch.tensor([x + [IGNORE_INDEX] * (w - len(x)) for x in tgt]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (w - len(x)) for x in ids])}


def grads(model, b, chunked: bool):
    model.zero_grad(set_to_none=True)
    loss = token_loss_sum(model, b, "cpu", chunked=chunked)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["full", "lora", "lora+modules_to_save"])
@pytest.mark.parametrize("packed", [True, False])
def test_token_loss_sum_chunked_equals_full_logits_loss_and_gradients(method, packed):
    model = tiny_model(tied=method != "full")
    if method != "full":
        from peft import LoraConfig, get_peft_model

        extra = {"modules_to_save": ["lm_head"]} if method.endswith("modules_to_save") else {}
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 lora_dropout=0.0, task_type="CAUSAL_LM", **extra))
        for n, p in model.named_parameters():  # lora_B starts at 0: move it so every gradient is non-trivial
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1)
    b = batch(packed)
    ref_loss, ref = grads(model, b, chunked=False)
    loss, got = grads(model, b, chunked=True)
    # the plain path casts logits to fp32 (this model is fp64): agreement to fp32 precision
    assert abs(loss - ref_loss) <= 1e-6 * abs(ref_loss)
    assert got.keys() == ref.keys() and ref
    for n in ref:
        assert torch.allclose(got[n], ref[n], rtol=1e-5, atol=1e-6 * ref[n].abs().max().item()), n
    if method == "full":
        assert "lm_head.weight" in got or "model.embed_tokens.weight" in got
