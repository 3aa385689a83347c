"""Cross-entropy over the trained tokens without full-vocabulary logits for all of them at once.

The LM head's logits for n trained tokens take n x vocab floats, and autograd keeps them, their log-softmax and their
gradient (on the embedded model: 49,152 x 4 bytes = 192 KB per token, three times over). As Liger's fused linear
cross-entropy and Apple's Cut Cross-Entropy do, the loss here is computed chunk by chunk of tokens: each chunk's
logits are made, reduced to its loss and to the gradients for the hidden states (and for the head's weight when it
trains), then freed, so the peak holds one chunk of logits. The backward pass only scales those gradients.

The model's own forward still runs (DDP, FSDP and DeepSpeed hooks see an ordinary call): for the duration of one call
the LM head's `forward` is swapped for one that returns this loss instead of logits. Heads that are not a plain
linear layer (a LoRA-wrapped or trained-copy head) get chunks recomputed under activation checkpointing instead, and
models that post-process logits (soft-capping, a logit scale) keep the plain path.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

CHUNK_ELEMENTS = 1 << 23  # logits per chunk: 32 MB in fp32 (170 tokens of a 49K vocabulary)


def chunk_rows(vocab: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    return max(16, chunk_elements // max(1, vocab))


def _linear_ce_class():
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """sum_i CE(hidden_i @ weight.T + bias, target_i), chunked, gradients made during the forward."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, rows: int):
            want_h, want_w = hidden.requires_grad, weight.requires_grad
            want_b = bias is not None and bias.requires_grad
            acc = torch.promote_types(hidden.dtype, torch.float32)  # logits and sums: fp32 at least
            total = torch.zeros((), dtype=acc, device=hidden.device)
            grad_h = torch.empty_like(hidden) if want_h else None
            grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
            grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if want_b else None
            for s in range(0, hidden.shape[0], rows):
                h, t = hidden[s:s + rows], targets[s:s + rows]
                logits = torch.nn.functional.linear(h, weight, bias).to(acc)
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                if want_h or want_w or want_b:
                    probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place: d loss / d logits = p - onehot
                    probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                    d = probs.to(hidden.dtype)
                    if want_h:
                        grad_h[s:s + rows] = d @ weight
                    if want_w:
                        grad_w += probs.t() @ h.to(acc)
                    if want_b:
                        grad_b += probs.sum(0)
                del logits
            ctx.save_for_backward(*(x for x in (grad_h, grad_w, grad_b) if x is not None))
            ctx.which = (want_h, want_w, want_b)
            ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
            return total

        @staticmethod
        def backward(ctx, grad_out):
            saved = iter(ctx.saved_tensors)
            out: list[Any] = []
            for want, dtype in zip(ctx.which, ctx.dtypes):
                out.append((next(saved) * grad_out).to(dtype) if want else None)
            return out[0], out[1], out[2], None, None

    return LinearCrossEntropy


_CLASS: Any = None


def linear_cross_entropy(hidden, weight, bias, targets, rows: int | None = None):
    """Summed cross-entropy of `hidden @ weight.T (+ bias)` against `targets`, one chunk of rows at a time."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _linear_ce_class()
    return _CLASS.apply(hidden, weight, bias, targets, rows or chunk_rows(weight.shape[0]))


def checkpointed_cross_entropy(head, hidden, targets, rows: int):
    """Any head module: chunks of logits recomputed in the backward pass (activation checkpointing)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    def part(h, t):
        return torch.nn.functional.cross_entropy(head(h).float(), t, reduction="sum")

    total = None
    for s in range(0, hidden.shape[0], rows):
        x = checkpoint(part, hidden[s:s + rows], targets[s:s + rows], use_reentrant=False)
        total = x if total is None else total + x
    return total


def _unwrap(model):
    """The transformers model under DDP/FSDP/DeepSpeed and peft wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if inner is None or inner is model:
            break
        model = inner
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def output_head(model):
    """(LM head module, its config) when the loss can be taken from the head's input; None otherwise."""
    base = _unwrap(model)
    cfg = getattr(base, "config", None)
    if cfg is None or not hasattr(base, "get_output_embeddings"):
        return None
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    if getattr(text_cfg, "final_logit_softcapping", None) or getattr(text_cfg, "logit_scale", None) not in (None, 1):
        return None
    head = base.get_output_embeddings()
    return head


@contextlib.contextmanager
def head_returns_loss(head, targets) -> Iterator[None]:
    """Within the block, `head(hidden)` returns the summed cross-entropy against `targets` (shape (1, 1, 1)) instead
    of logits; `targets` are the trained tokens in the order the model hands their hidden states to the head."""
    import torch

    plain = type(head) is torch.nn.Linear
    original = head.forward
    rows = chunk_rows(head.out_features if hasattr(head, "out_features") else targets.numel())

    def forward(hidden):
        h = hidden.reshape(-1, hidden.shape[-1])
        if h.shape[0] != targets.shape[0]:
            raise RuntimeError(f"the LM head got {h.shape[0]} hidden states for {targets.shape[0]} targets")
        if plain:
            loss = linear_cross_entropy(h, head.weight, head.bias, targets, rows)
        else:
            loss = checkpointed_cross_entropy(original, h, targets, rows)
        return loss.reshape(1, 1, 1)

    own = head.__dict__.get("forward")  # accelerate's hooks set an instance forward; keep it to restore
    head.forward = forward
    try:
        yield
    finally:
        if own is None:
            del head.forward  # back to the class's forward
        else:
            head.forward = own
