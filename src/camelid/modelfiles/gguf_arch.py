"""What differs per architecture in a GGUF export: llama.cpp's architecture name, hyperparameter keys and tensor
changes, as llama.cpp's `convert_hf_to_gguf.py` writes them (its `conversion/` classes LlamaModel, Qwen2Model,
Qwen3Model, Gemma2Model, Gemma3Model, Phi3MiniModel and TextModel.set_gguf_parameters). Tensor names come from
the `gguf` package's own per-architecture maps (`gguf.get_tensor_name_map`); the tests compare every tensor of a
tiny model of each architecture bit for bit with llama.cpp's converter.
"""

from __future__ import annotations

import math
from pathlib import Path

from camelid.core.io import CamelidError, read_json

# Hugging Face architecture -> llama.cpp architecture (gguf.MODEL_ARCH member name)
ARCHITECTURES = {
    "LlamaForCausalLM": "LLAMA",  # Llama 2/3/3.x, SmolLM2
    "MistralForCausalLM": "LLAMA",
    "Qwen2ForCausalLM": "QWEN2",  # Qwen2, Qwen2.5
    "Qwen3ForCausalLM": "QWEN3",
    "Gemma2ForCausalLM": "GEMMA2",
    "Gemma3ForCausalLM": "GEMMA3",  # the text models (gemma-3-1b; the larger ones' language_model)
    "Phi3ForCausalLM": "PHI3",  # Phi-3, Phi-3.5 mini, Phi-4 mini
}
ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope", "su")


def architecture(ckpt: Path, cfg: dict):
    """The gguf.MODEL_ARCH of a checkpoint's config.json, or a one-line refusal naming the supported ones."""
    import gguf

    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise CamelidError(f"{ckpt}: architecture {arch} is not supported for GGUF export (supported: "
                           f"{', '.join(ARCHITECTURES)}); use llama.cpp's convert_hf_to_gguf.py")
    return gguf.MODEL_ARCH[ARCHITECTURES[arch]]


def permute(w, n_head: int, n_head_kv: int | None):
    """HF rotary layout (first half / second half of each head) -> Meta's interleaved pairs (llama.cpp)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_parameters(cfg: dict) -> dict:
    """The rope settings, gathered from old and new config keys (TextModel.__init__ in the converter)."""
    rope = dict(cfg.get("rope_parameters", cfg.get("rope_scaling")) or {})
    if "full_attention" not in rope and "sliding_attention" not in rope:
        local = next((cfg[k] for k in ("local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta",
                                       "rope_local_base_freq") if cfg.get(k) is not None), None)
        theta = next((cfg[k] for k in ("global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta",
                                       "rotary_emb_base") if cfg.get(k) is not None), None)
        if local is not None:
            rope["sliding_attention"] = {"rope_theta": local}
        if "rope_theta" not in rope and theta is not None:
            rope["rope_theta"] = theta
        if "rope_type" not in rope and rope.get("type") is not None:
            rope["rope_type"] = rope["type"]
        if "partial_rotary_factor" not in rope and cfg.get("partial_rotary_factor") is not None:
            rope["partial_rotary_factor"] = cfg["partial_rotary_factor"]
        if "original_max_position_embeddings" not in rope and cfg.get("original_max_position_embeddings") is not None:
            rope["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]
    return rope


def check_rope(ckpt: Path, cfg: dict) -> None:
    rope = rope_parameters(cfg)
    kind = rope.get("full_attention", rope).get("rope_type", "default")
    if kind not in ROPE_TYPES:
        raise CamelidError(f"{ckpt}: rope scaling {kind!r} is not supported for GGUF export (supported: "
                           f"{', '.join(ROPE_TYPES)})")


def skip(arch, src: str, cfg: dict) -> bool:
    """Checkpoint tensors llama.cpp does not read."""
    import gguf

    if src.endswith((".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")):
        return True
    if src == "lm_head.weight" and (cfg.get("tie_word_embeddings") or arch == gguf.MODEL_ARCH.GEMMA2):
        return True  # Gemma 2 always ties its output to the embeddings
    return False


def tensor_type(outtype: str, dst: str, ndim: int, shape: tuple[int, ...]):
    """The GGML type of one tensor (prepare_tensors): norms, biases and vectors stay F32."""
    import gguf

    if ndim <= 1 or dst.endswith("_norm.weight") or not dst.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    if outtype == "f32":
        return gguf.GGMLQuantizationType.F32
    if outtype == "q8_0" and shape[-1] % 32 == 0:
        return gguf.GGMLQuantizationType.Q8_0
    return gguf.GGMLQuantizationType.F16


def vocab_rows(arch, tok_dir: Path, rows: int) -> int:
    """Gemma 3 drops embedding rows past the tokenizer (Gemma3Model.modify_tensors)."""
    import gguf

    if arch != gguf.MODEL_ARCH.GEMMA3:
        return rows
    if (tok_dir / "tokenizer.model").is_file():
        return min(rows, len(list(gguf.SentencePieceVocab(tok_dir).all_tokens())))
    tj = read_json(tok_dir / "tokenizer.json")
    return min(rows, len(tj["model"]["vocab"]) + len(tj.get("added_tokens", [])))


def transform(arch, src: str, t, cfg: dict, n_rows: int):
    """One checkpoint tensor (torch, f16 or f32) as llama.cpp stores it."""
    import gguf

    n_head = cfg["num_attention_heads"]
    if arch == gguf.MODEL_ARCH.LLAMA:
        if src.endswith(("q_proj.weight", "q_proj.bias")):
            t = permute(t, n_head, n_head)
        elif src.endswith(("k_proj.weight", "k_proj.bias")):
            t = permute(t, n_head, cfg.get("num_key_value_heads") or n_head)
    elif arch in (gguf.MODEL_ARCH.GEMMA2, gguf.MODEL_ARCH.GEMMA3):
        if arch == gguf.MODEL_ARCH.GEMMA3 and "embed_tokens.weight" in src:
            t = t[:n_rows]
        if src.endswith("norm.weight"):  # Gemma's RMSNorm scales by (1 + weight); llama.cpp by weight
            t = t + 1
    return t


def hparams(w, arch, cfg: dict, n_layer: int) -> None:
    """The architecture's hyperparameter keys (TextModel.set_gguf_parameters and each model's override)."""
    import gguf

    A = gguf.MODEL_ARCH
    rope = rope_parameters(cfg)
    if arch == A.GEMMA2:  # Gemma2Model writes its own short list (no rope keys)
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_embedding_length(cfg["hidden_size"])
        w.add_block_count(n_layer)
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(cfg["num_attention_heads"])
        w.add_head_count_kv(cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
        w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        w.add_sliding_window(cfg["sliding_window"])
        return
    if arch == A.PHI3:  # Phi3MiniModel.set_gguf_parameters
        n_embd, n_head = cfg["hidden_size"], cfg["num_attention_heads"]
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        w.add_embedding_length(n_embd)
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_block_count(n_layer)
        w.add_head_count(n_head)
        w.add_head_count_kv(cfg["num_key_value_heads"])
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        w.add_rope_dimension_count(int(rope.get("partial_rotary_factor", 1.0) * n_embd) // n_head)
        w.add_rope_freq_base(rope.get("full_attention", rope)["rope_theta"])
        w.add_sliding_window(cfg.get("sliding_window") or 0)
        return
    _text_model_hparams(w, cfg, rope, n_layer)
    if arch == A.LLAMA:
        w.add_vocab_size(cfg["vocab_size"])
        w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    elif arch == A.GEMMA3:
        w.add_context_length(cfg.get("max_position_embeddings", 131072))
        w.add_head_count(cfg.get("num_attention_heads", 8))
        w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
        w.add_key_length(cfg.get("head_dim", 256))
        w.add_value_length(cfg.get("head_dim", 256))
        w.add_rope_freq_base(rope.get("full_attention", rope).get("rope_theta", 1_000_000.0))
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        if cfg.get("sliding_window_pattern") != 1:
            w.add_sliding_window(cfg["sliding_window"])
        w.add_head_count_kv(cfg.get("num_key_value_heads", 4))


def _text_model_hparams(w, cfg: dict, rope: dict, n_layer: int) -> None:
    import gguf

    w.add_block_count(n_layer)
    if cfg.get("max_position_embeddings") is not None:
        w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    if cfg.get("num_key_value_heads") is not None:
        w.add_head_count_kv(cfg["num_key_value_heads"])
    params = rope.get("full_attention", rope)
    kind, factor = params.get("rope_type"), params.get("factor")
    if kind == "linear" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(factor)
    elif kind == "yarn" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(factor)
        w.add_rope_scaling_orig_ctx_len(params["original_max_position_embeddings"])
        for key, add in (("extrapolation_factor", w.add_rope_scaling_yarn_ext_factor),
                         ("beta_fast", w.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", w.add_rope_scaling_yarn_beta_slow)):
            if params.get(key) is not None:
                add(params[key])
        attn = params.get("attention_factor", params.get("attn_factor"))
        if attn is not None:
            w.add_rope_scaling_yarn_attn_factor(attn)
    elif kind in ("su", "longrope"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
    if params.get("rope_theta") is not None:
        w.add_rope_freq_base(params["rope_theta"])
    if rope.get("sliding_attention", {}).get("rope_theta") is not None:
        w.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])
    if cfg.get("rms_norm_eps") is not None:
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if cfg.get("head_dim") is not None:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])


def extra_tensors(w, arch, cfg: dict) -> list[tuple[str, object]]:
    """Tensors computed from the config: Llama 3's rope factors, Phi-3's long-context rope factors."""
    import gguf
    import torch

    rope = rope_parameters(cfg)
    params = rope.get("full_attention", rope)
    if arch == gguf.MODEL_ARCH.LLAMA and params.get("rope_type", "").lower() == "llama3":
        base = params.get("rope_theta", 10000.0)
        dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        factor, lo, hi = params.get("factor", 8.0), params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
        old = params.get("original_max_position_embeddings", 8192)
        factors = []
        for freq in freqs:  # LlamaModel.generate_extra_tensors, step for step (same float32 results)
            wavelen = 2 * math.pi / freq
            if wavelen < old / hi:
                factors.append(1)
            elif wavelen > old / lo:
                factors.append(factor)
            else:
                smooth = (old / wavelen - lo) / (hi - lo)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        return [(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                 torch.tensor(factors, dtype=torch.float32).numpy())]
    if arch == gguf.MODEL_ARCH.PHI3 and rope.get("long_factor"):
        n_embd, n_head = cfg["hidden_size"], cfg["num_attention_heads"]
        orig = rope["original_max_position_embeddings"]
        scale = cfg["max_position_embeddings"] / orig
        kind = rope.get("rope_type", "").lower()
        if kind in ("su", "longrope"):
            attn = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
        elif kind == "yarn":
            attn = 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
        else:
            raise CamelidError(f"rope scaling {kind!r} with long_factor is not supported for GGUF export")
        w.add_rope_scaling_attn_factors(attn)
        dims = int(rope.get("partial_rotary_factor", 1.0) * n_embd) // n_head
        if len(rope["long_factor"]) != len(rope["short_factor"]) or len(rope["long_factor"]) != dims / 2:
            raise CamelidError(f"rope long_factor and short_factor must have {dims // 2} values each")
        return [(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight",
                 torch.tensor(rope["long_factor"], dtype=torch.float32).numpy()),
                (gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight",
                 torch.tensor(rope["short_factor"], dtype=torch.float32).numpy())]
    return []
