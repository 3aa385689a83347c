"""`camelid export --merge`: fold a run's PEFT adapter into its base weights, as one full checkpoint.

The adapter is folded in with peft's `merge_and_unload` on the full-precision base (a QLoRA run merges onto the
unquantised base, as alpaca-lora's export does), saved as safetensors with the run's tokenizer and camelid.json
(`method: merged`), written to a temp directory and renamed into place.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from camelid.core.io import CamelidError, atomic_dir
from camelid.models.card import write_model_card
from camelid.models.checkpoint import RunInfo, load_tokenizer, resolve, trained_tokenizer, write_legacy_keys

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def merge_adapter(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Fold a run's PEFT adapter into its base and save a full safetensors checkpoint (default: RUN-merged)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ckpt = resolve(run_dir)
    base, adapter, run = ckpt.base, ckpt.adapter, ckpt.run
    if adapter is None:
        raise CamelidError(f"{run_dir}: holds a full model, not an adapter: nothing to merge (export it with --gguf "
                           "or use it as it is)")
    out = Path(out) if out else adapter.parent / f"{adapter.name}-merged"
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):  # before the merge, not after
        raise CamelidError(f"{out}: already exists (pass --force to replace it)")
    tok_dir = ckpt.tokenizer_dir
    tokenizer = load_tokenizer(tok_dir)
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    template = run.template if run else None
    tokenizer = trained_tokenizer(tokenizer, template)  # the trained chat_template, a pad that is no end token
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(out, force) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        _copy_tokenizer(tok_dir, tmp)
        tokenizer.save_pretrained(tmp)
        write_legacy_keys(tmp)  # transformers 4.x reads the same model
        if (adapter / "generation_config.json").is_file():  # a run's own (e.g. fixed by `camelid model check`)
            shutil.copy2(adapter / "generation_config.json", tmp / "generation_config.json")
        merged_from = {"method": (run.method if run else None) or "lora", "adapter": str(adapter.resolve()),
                       "base_model": str(base)}
        info = run.model_copy(update={"method": "merged", "merged_from": merged_from}) if run else \
            RunInfo(method="merged", merged_from=merged_from)
        info.model_fields_set.update({"method", "merged_from"})
        info.write(tmp)
        write_model_card(tmp, info, repo=out.name)  # transformers, base_model, the run's training facts
    return out
