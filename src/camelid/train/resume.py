"""The run directory: what a fresh, resumed or overwritten run finds there, and atomic checkpoints.

A checkpoint is `checkpoints/step-NNNNNN/`: accelerate's state (trainable weights, optimizer, RNG of every process,
the scheduler and our Progress), written into a temp directory and renamed, so a crash leaves either the previous
checkpoint or the new one, never half of one. Resuming restores all of it and replays the seeded data order, so the
losses after a resume are those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from camelid.core.io import CamelidError, read_jsonl, write_json, write_jsonl
from camelid.train.config import TrainConfig

CKPT_DIR = "checkpoints"
# settings that may change between a checkpoint and its resume (they do not change the computation)
RESUMABLE_CHANGES = {"output_dir", "resume", "overwrite", "log_steps", "eval_steps", "save_steps", "save_total_limit",
                     "eval_prompts", "sample_max_tokens", "micro_batch_size", "gradient_checkpointing", "eval_data",
                     "val_size", "report_to"}


@dataclass
class Progress:
    """Where the run is; saved with every checkpoint (accelerate custom state)."""

    step: int = 0
    tokens_seen: int = 0
    trained_tokens_seen: int = 0
    train_time_s: float = 0.0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, d: dict) -> None:
        self.__dict__.update(d)


def looks_like_run(out: Path) -> bool:
    return any((out / n).exists() for n in ("camelid.json", "trainer_log.jsonl", CKPT_DIR))


def latest_checkpoint(out: Path) -> Path | None:
    root = out / CKPT_DIR
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    return done[-1] if done else None


def prepare_output_dir(out: Path, cfg: TrainConfig, is_main: bool) -> Path | None:
    """Decide fresh / resume / refuse. Returns the checkpoint to resume from, or None."""
    if (out / "camelid.json").is_file() and not cfg.overwrite:
        raise CamelidError(f"{out} holds a finished run (camelid.json); choose another output_dir or set "
                           "overwrite=true to replace it")
    if cfg.overwrite and looks_like_run(out):
        if is_main:
            shutil.rmtree(out)
        return None
    ckpt = latest_checkpoint(out)
    if ckpt is not None and not cfg.resume:
        raise CamelidError(f"{out} holds checkpoints of an unfinished run (newest {ckpt.name}); set resume=true to "
                           "continue it or overwrite=true to start over")
    return ckpt


def check_resumable(ckpt: Path, cfg: TrainConfig, data_fingerprint: str) -> None:
    saved = json.loads((ckpt / "run_config.json").read_text(encoding="utf-8"))
    now = cfg.model_dump()
    diffs = [f"{k} (was {saved['config'].get(k)!r}, now {now[k]!r})" for k in now
             if k not in RESUMABLE_CHANGES and saved["config"].get(k) != now[k]]
    if saved.get("data_fingerprint") != data_fingerprint:
        diffs.append("the tokenized training data")
    if diffs:
        raise CamelidError(f"cannot resume from {ckpt}: it was made with different settings: {'; '.join(diffs)}. "
                           "Restore them, or set overwrite=true to start over")


def save_checkpoint(accelerator, out: Path, step: int, cfg: TrainConfig, data_fingerprint: str) -> Path:
    """All processes call this; the main process renames the finished temp dir into place and prunes old ones."""
    root = out / CKPT_DIR
    tmp, final = root / f".tmp-step-{step:06d}", root / f"step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / "run_config.json", {"config": cfg.model_dump(), "data_fingerprint": data_fingerprint,
                                             "step": step})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(p for p in root.iterdir() if p.name.startswith("step-"))[:-cfg.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def trainable_only_hooks(accelerator, model) -> None:
    """Checkpoint only what trains (an adapter checkpoint is a few MB, not the whole base model)."""
    unwrapped = accelerator.unwrap_model(model)
    names = {n for n, p in unwrapped.named_parameters() if p.requires_grad}
    if len(names) == len(list(unwrapped.parameters())):
        return

    def save_hook(models, weights, output_dir):
        for i, w in enumerate(weights):
            keep = {k: v for k, v in w.items() if k.removeprefix("module.") in names}
            weights[i] = keep

    accelerator.register_save_state_pre_hook(save_hook)


def check_restored(ckpt: Path, model) -> None:
    """After a non-strict load: every trainable tensor must have come from the checkpoint (never a silent fresh
    adapter because names changed)."""
    from safetensors import safe_open

    f = ckpt / "model.safetensors"
    if not f.is_file():  # FSDP / DeepSpeed write their own sharded formats, loaded strictly
        return
    with safe_open(str(f), "pt") as st:
        saved = {k.removeprefix("module.") for k in st.keys()}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n.removeprefix("module.") not in saved]
    if missing:
        raise CamelidError(f"{ckpt}: the checkpoint lacks {len(missing)} trainable tensor(s), e.g. {missing[0]}; it "
                           "was made for another model or method (set overwrite=true to start over)")


def trim_log(path: Path, step: int) -> None:
    """On resume, drop log rows past the checkpoint (they will be written again by the resumed steps)."""
    if path.is_file():
        rows = [r for _, r in read_jsonl(path) if r.get("step", 0) <= step]
        write_jsonl(path, rows)
