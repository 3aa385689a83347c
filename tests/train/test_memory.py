"""train/memory.py: the fused SwiGLU gives the same forward to the bit and the same gradients as autograd's, and
training with it gives the same losses; the heap setting holds on this platform."""

from __future__ import annotations

import sys

import pytest

from camelid.train.memory import fuse_swiglu, keep_heap_small


def _tiny(seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).double()


def _grads(model, ids):
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora-all-linear"])
def test_the_fused_swiglu_has_the_same_forward_and_gradients_as_autograd(lora):
    import torch

    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    models = [_tiny(), _tiny()]
    if lora:
        from peft import LoraConfig, get_peft_model

        def wrap(m):
            torch.manual_seed(2)  # the same random adapter in both
            return get_peft_model(m, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))

        models = [wrap(m) for m in models]
    assert fuse_swiglu(models[1]) == 2
    (ref_logits, ref), (logits, got) = _grads(models[0], ids), _grads(models[1], ids)
    assert torch.equal(ref_logits, logits)  # the forward is the same operations
    assert ref.keys() == got.keys() and ref
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-10, atol=1e-12, msg=name)


def test_the_fused_swiglu_keeps_fewer_activations_for_the_backward():
    import torch

    def saved_bytes(model, ids) -> int:
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids).logits.sum()
        return sum(total)

    ids = torch.randint(0, 64, (2, 64))
    plain, fused = _tiny(), _tiny()
    fuse_swiglu(fused)
    # each MLP keeps gate and up but not silu(gate): 2 layers x 2 x 64 x 80 doubles fewer
    assert saved_bytes(plain, ids) - saved_bytes(fused, ids) == 2 * 2 * 64 * 80 * 8


def test_only_swiglu_mlps_are_fused():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    assert fuse_swiglu(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))) == 0
    assert fuse_swiglu(torch.nn.Linear(2, 2)) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_heap_threshold_is_pinned_on_linux():
    assert keep_heap_small() is True
