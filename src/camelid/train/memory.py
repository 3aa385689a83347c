"""Training's peak memory beyond the loss (train/loss.py): activations autograd keeps that are cheap to recompute,
and the heap that glibc keeps after they are freed.

Where the peak comes from (bench/train.py --breakdown; LoRA on the embedded 135M model, 8 x 256 tokens, fp32, no
activation checkpointing): about 80 MB of saved activations per layer, nearly half of them the MLP's: SwiGLU keeps
gate(x) for SiLU's backward and both SiLU(gate(x)) and up(x) for the product's. `fuse_swiglu` keeps gate(x) and up(x)
only and recomputes SiLU in the backward (as Liger's fused SwiGLU does), the same forward to the bit.

glibc serves large blocks from the heap once its mmap threshold has risen (it does after the first large free), and
a heap fragmented by a step's short-lived activations is not given back: on CPU the process's peak grew by a fifth
with no live tensor behind it. `keep_heap_small` pins the threshold so large blocks are mapped and returned on free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc's malloc.h)


def keep_heap_small(threshold: int = 128 * 1024) -> bool:
    """Pin glibc's mmap threshold (which also stops its dynamic growth): blocks of `threshold` bytes or more are
    mapped and unmapped on free. True when set (Linux with glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False


def _silu_mul():
    import torch

    class SiluMul(torch.autograd.Function):
        """silu(gate) * up, keeping gate and up only: SiLU is recomputed in the backward."""

        @staticmethod
        def forward(ctx, gate, up):
            ctx.save_for_backward(gate, up)
            return torch.nn.functional.silu(gate) * up

        @staticmethod
        def backward(ctx, grad):
            gate, up = ctx.saved_tensors
            sig = torch.sigmoid(gate)
            grad_gate = grad_up = None
            if ctx.needs_input_grad[0]:
                grad_gate = grad * up * (sig * (1 + gate * (1 - sig)))
            if ctx.needs_input_grad[1]:
                grad_up = grad * (gate * sig)
            return grad_gate, grad_up

    return SiluMul


def _is_swiglu(module) -> bool:
    import torch

    act = getattr(module, "act_fn", None)
    return (type(module).__name__.endswith("MLP") and all(hasattr(module, n) for n in ("gate_proj", "up_proj",
                                                                                          "down_proj"))
            and (isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"))


def fuse_swiglu(model) -> int:
    """Give every SwiGLU MLP (Llama, Mistral, Qwen2/3, SmolLM: down(silu(gate(x)) * up(x))) a forward that keeps
    two of its three intermediate activations for the backward. Returns how many MLPs were changed."""
    fn = _silu_mul()
    n = 0
    for module in model.modules():
        if not _is_swiglu(module):
            continue

        def forward(x: Any, m=module) -> Any:
            return m.down_proj(fn.apply(m.gate_proj(x), m.up_proj(x)))

        module.forward = forward
        n += 1
    return n
