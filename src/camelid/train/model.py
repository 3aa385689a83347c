"""Load the base model for a method (full, LoRA, DoRA, QLoRA), save what was trained, check it is not empty."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from camelid.core.io import CamelidError
from camelid.models.checkpoint import (base_checkpoint, load_tokenizer, portable_base, tokenizer_dir,
                                      trained_tokenizer, write_legacy_keys)
from camelid.train.config import TrainConfig
from camelid.train.memory import fuse_swiglu
from camelid.train.vocab import (EXTENSION_FILE, lora_embedding_kwargs, module_name, resize_embeddings,
                                 ties_embeddings, train_only_embeddings)


class AdapterError(CamelidError):
    pass


def tokenizer_source(cfg: TrainConfig, base: Path) -> Path:
    """Where the training tokenizer comes from: `cfg.tokenizer` (a directory, or a model / run directory holding
    one) or the base model's directory."""
    if cfg.tokenizer is None:
        return base
    return tokenizer_dir(cfg.tokenizer).resolve()


def check_extends(base_tok, tok, where: Path) -> None:
    """Refuse a tokenizer that renumbers the model's tokens: the model's rows would mean other tokens."""
    new = tok.get_vocab()
    moved = next((t for t, i in base_tok.get_vocab().items() if new.get(t) != i), None)
    if moved is not None:
        raise CamelidError(f"tokenizer {where}: token {moved!r} has id {new.get(moved)} there but "
                           f"{base_tok.get_vocab()[moved]} in the model's tokenizer; only a tokenizer that extends "
                           "the model's (`camelid tokenizer extend --base MODEL`) keeps its embeddings meaningful")


def is_extended(cfg: TrainConfig, tok_dir: Path) -> bool:
    """The vocabulary was extended: a new tokenizer is given, or the model was trained with one (its
    vocab_extension.json, copied into every run trained with it)."""
    return cfg.tokenizer is not None or (tok_dir / EXTENSION_FILE).is_file()


def modules_to_save_kwargs(model, cfg: TrainConfig, extended: bool) -> dict:
    """peft LoraConfig keywords for `lora.modules_to_save`. With tied embeddings (SmolLM2) only the embedding is
    listed and `ensure_weight_tying` shares the trainable copy with the LM head (vocab.lora_embedding_kwargs)."""
    wanted = cfg.lora.modules_to_save
    if not wanted or (wanted == "auto" and not extended):
        return {}
    if wanted == "auto":
        return lora_embedding_kwargs(model)
    if not ties_embeddings(model):
        return {"modules_to_save": list(wanted)}
    emb = module_name(model, model.get_input_embeddings())
    head = module_name(model, model.get_output_embeddings())
    names = [emb if n in (head, head.rsplit(".", 1)[-1]) else n for n in wanted]
    names = list(dict.fromkeys(names))  # the tied pair listed twice is one matrix
    tied = any(n in (emb, emb.rsplit(".", 1)[-1]) for n in names)
    return {"modules_to_save": names, "ensure_weight_tying": tied}


def load_for_training(cfg: TrainConfig, device, bf16: bool, report: dict | None = None):
    """(model ready to train, tokenizer, base dir). Adapters get peft; QLoRA loads the base in 4-bit NF4.

    `cfg.tokenizer` replaces the model's tokenizer and grows the embeddings to it (rows: the mean of the
    base pieces of each new token);
    `cfg.trainable` freezes all but the embeddings; `lora.modules_to_save` trains modules fully beside an adapter.
    What was done is written into `report` (for camelid.json)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = base_checkpoint(cfg.model)
    tok_dir = tokenizer_source(cfg, path)
    tok = load_tokenizer(tok_dir, require_eos=True)
    base_tok = None
    if cfg.tokenizer is not None:
        base_tok = load_tokenizer(path, require_eos=True)
        check_extends(base_tok, tok, tok_dir)
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
    model.config.use_cache = False  # the cache must be off for packed rows (see data/examples.py) and is useless in training
    fuse_swiglu(model)  # the MLP keeps two of its three activations for the backward (train/memory.py)
    rows = model.get_input_embeddings().weight.shape[0]
    added = resize_embeddings(model, tok, base_tokenizer=base_tok) if base_tok is not None else 0  # 0: sizes match
    if cfg.trainable:
        train_only_embeddings(model)
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    extra: dict = {}
    if cfg.method != "full":
        from peft import LoraConfig as PeftLoraConfig, get_peft_model

        targets = cfg.lora.target_modules
        extra = modules_to_save_kwargs(model, cfg, is_extended(cfg, tok_dir))
        pc = PeftLoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                            target_modules="all-linear" if targets == ["all-linear"] else targets,
                            use_dora=cfg.method == "dora", bias="none", task_type="CAUSAL_LM", **extra)
        try:
            model = get_peft_model(model, pc)
        except ValueError as e:
            raise CamelidError(f"lora.target_modules {targets}: {e}") from None
    if report is not None:
        report.update({"tokenizer": str(tok_dir), "vocab_size": len(tok), "embedding_rows": rows + added,
                       "embedding_rows_added": added, "trainable": cfg.trainable,
                       "modules_to_save": extra.get("modules_to_save")})
    return model, tok, path


def trainable_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def save_trained(model, tokenizer, out: Path, cfg: TrainConfig, base: Path, stop_ids: list[int],
                 state_dict: dict | None = None) -> list[str]:
    """Write the adapter (adapter_config.json + adapter_model.safetensors) or the full model (config.json +
    model.safetensors) and the tokenizer (with its vocab_extension.json, when extended) into `out`; return the file
    names written."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = trained_tokenizer(tokenizer, cfg.template)
    if cfg.method == "full":
        model.generation_config.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
        model.generation_config.pad_token_id = model.config.pad_token_id = tokenizer.pad_token_id
        model.config.use_cache = True
        model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    else:
        # embeddings trained in full (modules_to_save) are saved as such; peft's "auto" would also store the
        # resized original matrices, which the adapter never uses (3x the size with tied embeddings)
        full = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
        trained = all(type(m).__name__ == "ModulesToSaveWrapper" for m in full)
        model.save_pretrained(out, state_dict=state_dict, safe_serialization=True,
                              save_embedding_layers=False if trained else "auto")
        ac = out / "adapter_config.json"
        conf = json.loads(ac.read_text(encoding="utf-8"))
        conf["base_model_name_or_path"] = portable_base(cfg.model, base)  # the hub id, never this machine's cache
        ac.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        check_adapter(out)
    tokenizer.save_pretrained(out)  # the trained chat_template, a pad that is not an end token
    write_legacy_keys(out)  # transformers 4.x reads the same model
    ext = tokenizer_source(cfg, base) / EXTENSION_FILE
    if ext.is_file():  # the run's tokenizer is an extended one: chat loads it, a next stage knows it (auto)
        shutil.copyfile(ext, out / EXTENSION_FILE)
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
