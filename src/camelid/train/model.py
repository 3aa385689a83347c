"""Load the base model for a method (full, LoRA, DoRA, QLoRA), save what was trained, check it is not empty."""

from __future__ import annotations

import json
from pathlib import Path

from camelid.core.io import CamelidError
from camelid.train.config import TrainConfig


class AdapterError(CamelidError):
    pass


def base_dir(spec: str) -> Path:
    """The checkpoint directory a model spec names: `embedded` (dequantised SmolLM2), `hf:PATH` or a directory."""
    from camelid.models.hf import embedded_hf_dir

    if spec == "embedded":
        return embedded_hf_dir()
    path = Path(spec[3:] if spec.startswith("hf:") else spec).expanduser().resolve()
    if not path.is_dir():
        raise CamelidError(f"model {spec!r}: no such directory (use embedded or hf:PATH to a transformers checkpoint)")
    if (path / "adapter_config.json").is_file():
        raise CamelidError(f"model {spec!r} is a LoRA adapter: train from its base model, or merge it first "
                           "(`camelid export`)")
    if not (path / "config.json").is_file():
        raise CamelidError(f"model {spec!r}: not a transformers checkpoint (no config.json)")
    return path


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.eos_token_id is None:
        raise CamelidError(f"{path}: the tokenizer has no EOS token, so a trained model could never stop "
                           "(set eos_token in tokenizer_config.json)")
    return tok


def load_for_training(cfg: TrainConfig, device, bf16: bool):
    """(model ready to train, tokenizer, base dir). Adapters get peft; QLoRA loads the base in 4-bit NF4."""
    import torch
    from transformers import AutoModelForCausalLM

    path = base_dir(cfg.model)
    tok = load_tokenizer(path)
    kw: dict = {"dtype": torch.float32}
    if cfg.method in ("lora", "dora") and bf16:
        kw["dtype"] = torch.bfloat16  # frozen base in bf16; adapter weights stay fp32 (peft autocast_adapter_dtype)
    if cfg.method == "qlora":
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32)
        kw["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(path, **kw)
    model.config.use_cache = False  # the cache must be off for packed rows (see data.py) and is useless in training
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method != "full":
        from peft import LoraConfig as PeftLoraConfig, get_peft_model

        targets = cfg.lora.target_modules
        pc = PeftLoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                            target_modules="all-linear" if targets == ["all-linear"] else targets,
                            use_dora=cfg.method == "dora", bias="none", task_type="CAUSAL_LM")
        try:
            model = get_peft_model(model, pc)
        except ValueError as e:
            raise CamelidError(f"lora.target_modules {targets}: {e}") from None
    return model, tok, path


def trainable_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def save_trained(model, tokenizer, out: Path, cfg: TrainConfig, base: Path, stop_ids: list[int],
                 state_dict: dict | None = None) -> list[str]:
    """Write the adapter (adapter_config.json + adapter_model.safetensors) or the full model (config.json +
    model.safetensors) and the tokenizer into `out`; return the file names written."""
    out.mkdir(parents=True, exist_ok=True)
    if cfg.method == "full":
        model.generation_config.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
        model.config.use_cache = True
        model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    else:
        model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
        ac = out / "adapter_config.json"
        conf = json.loads(ac.read_text(encoding="utf-8"))
        conf["base_model_name_or_path"] = str(base)  # absolute: the run directory loads from anywhere
        ac.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        check_adapter(out)
    tokenizer.save_pretrained(out)
    return sorted(p.name for p in out.iterdir())


def check_adapter(path: Path) -> dict:
    """Reload a saved adapter and refuse an empty one (every lora_B still zero: nothing was learned)."""
    from safetensors.torch import load_file

    f = path / "adapter_model.safetensors"
    if not f.is_file():
        raise AdapterError(f"{f}: adapter weights were not written")
    weights = load_file(f)
    b = {k: v for k, v in weights.items() if "lora_B" in k}
    if not b:
        raise AdapterError(f"{f}: holds no LoRA weights (keys: {list(weights)[:3]}...)")
    nonzero = sum(1 for v in b.values() if v.abs().sum().item() > 0)
    if nonzero == 0:
        raise AdapterError(f"{f}: the adapter is empty (all {len(b)} lora_B matrices are zero): nothing was learned. "
                           "Check that records have trained tokens, that lr > 0 and that at least one step ran")
    return {"tensors": len(weights), "lora_B_nonzero": nonzero, "lora_B_total": len(b)}


def tokenizer_for(spec: str):
    """(tokenizer, template name the model would use by default) for a model spec, loading no weights."""
    from transformers import AutoTokenizer

    from camelid.models import parse_spec
    from camelid.models.hf import embedded_hf_dir, resolve_checkpoint

    s = parse_spec(spec)
    if s.kind == "embedded":
        return load_tokenizer(embedded_hf_dir()), None
    if s.kind == "gguf":
        p = Path(s.target)
        return AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name), None
    if s.kind != "hf":
        raise CamelidError(f"model {spec!r}: rendering needs a local tokenizer (embedded, hf:PATH or gguf:PATH)")
    base, adapter, cfg = resolve_checkpoint(s.target)
    tok_dir = adapter if adapter is not None and (adapter / "tokenizer_config.json").is_file() else base
    return load_tokenizer(tok_dir), (cfg or {}).get("template")
