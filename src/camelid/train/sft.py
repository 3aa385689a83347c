"""Supervised fine-tuning: the whole loop, written out.

One optimizer step = `global_batch_size` sequences over all processes, cut into micro-batches. The loss of a step is
the sum of token losses over the whole accumulation window divided by the number of trained tokens in that window
(across processes), so batch 8 x accumulation 1 and batch 1 x accumulation 8 give the same loss and gradients, and a
long answer weighs as much per token as a short one. Logits are computed only where a token is trained.

Multi-process: launch with `torchrun --nproc_per_node N -m camelid train ...` (DDP; gloo on CPU) or
`accelerate launch --config_file {fsdp,deepspeed_zero2,deepspeed_zero3}.yaml -m camelid train ...`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import camelid
from camelid.core.columns import using_columns
from camelid.core.io import CamelidError, sha256_file
from camelid.core.templates import get_template
from camelid.core.tokenize import IGNORE_INDEX, encode, end_token_id
from camelid.data.examples import (DataStats, Example, build_examples, check_data_files, collate, data_files_info,
                                   examples_fingerprint, micro_batches, plan_steps, read_files, split_eval,
                                   steps_per_epoch, text_examples)
from camelid.models.card import CARD_FILE, write_model_card
from camelid.models.checkpoint import RUN_FILE, RunInfo
from camelid.train import resume as ck
from camelid.train.config import TrainConfig
from camelid.train.curriculum import order_examples
from camelid.train.loss import head_returns_loss, output_head
from camelid.train.memory import keep_heap_small
from camelid.train.model import load_for_training, save_trained, trainable_params
from camelid.train.plot import plot_losses
from camelid.train.tracking import TrainLog, check_report_to


class TrainingError(CamelidError):
    pass


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    losses: list[float]  # one per optimizer step run in this process's lifetime (resumed runs: the resumed steps)
    final_loss: float | None
    eval_loss: float | None
    stats: DataStats
    train_time_s: float
    tokens_seen: int
    peak_memory_mb: float
    trainable_params: int
    log: list[dict] = field(default_factory=list)


def _log(console, msg: str, is_main: bool) -> None:
    if is_main and console is not None:
        console.print(msg, highlight=False)


def token_loss_sum(model, batch: dict, device, chunked: bool = True) -> Any:
    """Sum of cross-entropy over trained tokens of one micro-batch. Only trained positions reach the LM head, and
    (`chunked`) their loss is taken chunk by chunk without the full-vocabulary logits (train/loss.py)."""
    import torch.nn.functional as F

    targets = batch["targets"].to(device)
    keep = targets != IGNORE_INDEX
    kw: dict[str, Any] = {"input_ids": batch["input_ids"].to(device), "use_cache": False, "logits_to_keep": keep}
    if "position_ids" in batch:  # packed: no attention_mask, positions restart per sequence
        kw["position_ids"] = batch["position_ids"].to(device)
    else:
        kw["attention_mask"] = batch["attention_mask"].to(device)
    head = output_head(model) if chunked else None
    if head is not None:
        with head_returns_loss(head, targets[keep]):
            return model(**kw).logits.reshape(())
    logits = model(**kw).logits  # (n_trained, vocab)
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


def _precision(cfg: TrainConfig) -> str:
    import torch

    if cfg.precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if cfg.precision == "fp16" and not torch.cuda.is_available():
        raise CamelidError("precision fp16 needs a GPU; use fp32 (or bf16) on CPU")
    return {"fp32": "no"}.get(cfg.precision, cfg.precision)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """LR multiplier for the 0-based optimizer step. Unlike transformers' schedules no step runs at lr 0: warmup
    reaches the peak on its last step ((s+1)/w) and decay ends just above 0, so a short run (even one step) learns."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress


class Schedule:
    """A LambdaLR-like scheduler whose state is two integers (checkpoint-friendly)."""

    def __init__(self, optimizer, total: int, warmup: int, kind: str):
        self.optimizer, self.total, self.warmup, self.kind, self.step_num = optimizer, total, warmup, kind, 0
        self.base = [g["lr"] for g in optimizer.param_groups]
        self._apply()

    def _apply(self) -> None:
        f = lr_factor(self.step_num, self.total, self.warmup, self.kind)
        for g, b in zip(self.optimizer.param_groups, self.base):
            g["lr"] = b * f

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def step(self) -> None:
        self.step_num += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"step_num": self.step_num, "total": self.total, "warmup": self.warmup, "kind": self.kind,
                "base": self.base}

    def load_state_dict(self, d: dict) -> None:
        self.__dict__.update(d)
        self._apply()


def _scheduler(optimizer, cfg: TrainConfig, total: int) -> Schedule:
    return Schedule(optimizer, total, math.ceil(cfg.warmup_ratio * total), cfg.lr_scheduler)


def _optimizer(model, cfg: TrainConfig):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    # fused AdamW (transformers' default on CUDA, what trl's runs use): one kernel per step instead of for-each ops;
    # on an H200 it left the 1B full run's peak unchanged (20.55 GB) and its tokens/s within noise (bench/gpu.py)
    fused = bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8,
                             fused=fused or None)


def _reset_peak_memory() -> None:
    """Start this run's peak from here, so a second run in the same process does not report the first's."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets the RSS high-water mark (VmHWM)
            f.write("5")


def _peak_memory_mb() -> float:
    """GPU: peak allocated; CPU: peak resident memory of the process (VmHWM, since _reset_peak_memory)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def evaluate(model, examples: list[Example], cfg: TrainConfig, accelerator, pad_id: int,
             sharded: bool = False) -> float | None:
    """Mean token loss over held-out examples, split over processes. Every process runs the same number of
    forwards (sharded models need all of them; a process short of data runs a zero-weighted one)."""
    import torch

    if not examples:
        return None
    world = accelerator.num_processes
    mine = examples[accelerator.process_index::world]
    n_batches = math.ceil(math.ceil(len(examples) / world) / cfg.micro_batch_size)
    net = model if sharded else accelerator.unwrap_model(model)  # unwrapped DDP: no collectives in forward
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    net.eval()
    with torch.no_grad():
        for b in range(n_batches):
            part = mine[b * cfg.micro_batch_size:(b + 1) * cfg.micro_batch_size]
            if part:
                total[0] += token_loss_sum(net, collate(part, cfg.packing, pad_id), accelerator.device).double()
                total[1] += sum(e.n_trained for e in part)
            elif sharded:
                token_loss_sum(net, collate(examples[:1], cfg.packing, pad_id), accelerator.device)
    net.train()
    total = accelerator.reduce(total, "sum")
    return (total[0] / total[1]).item()


def sample(model, tokenizer, template, prompts: list[str], max_tokens: int, stop_ids: list[int], device) -> list[dict]:
    """Greedy answers to the eval prompts (how the model behaves now, stop included)."""
    import torch

    out = []
    model.eval()
    model.config.use_cache = True
    with torch.no_grad():
        for p in prompts:
            ids, _ = encode(tokenizer, template, [{"role": "user", "content": p}], add_generation_prompt=True)
            gen = model.generate(input_ids=torch.tensor([ids], device=device), attention_mask=None,
                                 max_new_tokens=max_tokens, do_sample=False, eos_token_id=stop_ids,
                                 pad_token_id=stop_ids[0])[0][len(ids):].tolist()
            stopped = bool(gen) and gen[-1] in stop_ids
            out.append({"prompt": p, "answer": tokenizer.decode(gen, skip_special_tokens=True),
                        "finish_reason": "stop" if stopped else "length", "tokens": len(gen)})
    model.config.use_cache = False
    model.train()
    return out


def train(cfg: TrainConfig, console=None) -> TrainResult:
    """Run (or resume) one fine-tuning run into `cfg.output_dir`; see the module docstring for the loss."""
    with using_columns(cfg.columns, "columns") if cfg.columns else contextlib.nullcontext():
        result = _train(cfg, console)
    out = Path(cfg.output_dir).expanduser().resolve()
    if int(os.environ.get("RANK", "0")) == 0 and (out / RUN_FILE).is_file():  # the Hub's model card, once
        if write_model_card(out) is None:
            _log(console, f"{out / CARD_FILE} was not written by camelid: left as it is (no model card)", True)
    return result


def _train(cfg: TrainConfig, console=None) -> TrainResult:
    if not cfg.data:
        raise CamelidError("no training data: set data=FILE (alpaca, seed-tasks, sharegpt or openai JSON/JSONL)")
    # before torch is even imported: a bad file is a one-line error in a second
    check_data_files([*cfg.data, *(cfg.eval_data or [])], cfg.data_format)
    check_report_to(cfg.report_to)
    keep_heap_small()  # freed activations go back to the system (train/memory.py)
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # a second run in this process may use another precision (process group kept)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=_precision(cfg))
    _reset_peak_memory()
    is_main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    out = Path(cfg.output_dir).expanduser().resolve()
    resume_from = ck.prepare_output_dir(out, cfg, is_main)
    accelerator.wait_for_everyone()
    grad_accum = cfg.grad_accum(world)

    set_seed(cfg.seed)
    vocab: dict = {}
    model, tokenizer, base = load_for_training(cfg, accelerator.device, accelerator.mixed_precision == "bf16", vocab)
    if vocab["embedding_rows_added"]:
        _log(console, f"tokenizer {vocab['tokenizer']}: {vocab['embedding_rows_added']:,} embedding rows added "
             f"({vocab['embedding_rows']:,}), each the mean of the rows of its base-tokenizer pieces", is_main)
    template = get_template(cfg.template, tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token)
    stop_ids = sorted({end_token_id(tokenizer, template), tokenizer.eos_token_id})
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]

    # ---- data: every loss is counted and reported
    examples, stats, order = _examples(cfg.data, cfg, tokenizer, template)
    train_ex, eval_ex = split_eval(examples, cfg.val_size, cfg.seed)
    if cfg.eval_data:
        eval_ex += _examples(cfg.eval_data, cfg, tokenizer, template, eval_only=True)[0]
    if order is not None:
        order.update({"trained_records": len(train_ex), "first_ids": [e.id for e in train_ex[:10]]})
        _log(console, f"curriculum {cfg.curriculum.rule}: " + ", ".join(
            f"{st['name']} {st['size']}" for st in order["stages"]) + " records, in this order", is_main)
    for problem in stats.problems():
        _log(console, f"[yellow]warning:[/] {problem}", is_main)
    if not train_ex:
        raise CamelidError(f"no record left to train on ({stats.records} read; " + "; ".join(stats.problems()) + ")")
    fingerprint = examples_fingerprint(train_ex, _fingerprint_extra(cfg, vocab))
    spe = steps_per_epoch(len(train_ex), cfg.global_batch_size, world)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * spe))
    ordered = cfg.curriculum is not None
    left_per_epoch = plan_steps(train_ex, 0, cfg.seed, cfg.global_batch_size, world, cfg.group_by_length,
                                ordered)[1]
    if left_per_epoch:
        _log(console, f"[yellow]note:[/] {left_per_epoch} record(s) per epoch do not fit an even split over {world} "
             "processes and " + ("are not trained (the curriculum order is fixed)" if ordered else
                                 "wait for the next epoch's shuffle"), is_main)

    # ---- optimizer, schedule, wrapping, resume
    n_trainable, n_total = trainable_params(model)
    optimizer = _optimizer(model, cfg)
    scheduler = _scheduler(optimizer, cfg, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    progress = ck.Progress()
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_for_checkpointing(progress)
    ck.trainable_only_hooks(accelerator, model)
    if resume_from is not None:
        ck.check_resumable(resume_from, cfg, fingerprint)
        accelerator.load_state(str(resume_from), strict=False)  # adapter checkpoints hold the trained tensors only
        ck.check_restored(resume_from, model)
        _log(console, f"resuming from {resume_from} (step {progress.step})", is_main)
        if is_main:
            ck.trim_log(out / "trainer_log.jsonl", progress.step)
    elif is_main and (out / "trainer_log.jsonl").exists():
        (out / "trainer_log.jsonl").unlink()  # a run killed before its first checkpoint starts over
    accelerator.wait_for_everyone()
    _log(console, f"training {cfg.method} on {base.name}: {len(train_ex)} records, {total_steps} steps of "
         f"{cfg.global_batch_size} sequences ({cfg.micro_batch_size} x {grad_accum} accumulation x {world} "
         f"process{'es' if world > 1 else ''}), lr {cfg.learning_rate:g}, {n_trainable:,} trainable parameters "
         f"({100 * n_trainable / n_total:.2f}%), precision {accelerator.mixed_precision.replace('no', 'fp32')}",
         is_main)

    log = TrainLog(out, cfg.report_to, cfg.model_dump(), progress.step) if is_main else None
    losses: list[float] = []
    rows: list[dict] = []
    plans: dict[int, list[list[int]]] = {}
    model.train()
    step_times: list[float] = []
    eval_loss = None
    stop = StopRequest()
    try:
        while progress.step < total_steps:
            t0 = time.perf_counter()
            epoch, k = divmod(progress.step, spe)
            if epoch not in plans:
                plans = {epoch: plan_steps(train_ex, epoch, cfg.seed, cfg.global_batch_size, world,
                                           cfg.group_by_length, ordered)[0]}
            step_idx = plans[epoch][k]
            window_tokens = sum(train_ex[i].n_trained for i in step_idx)  # every process knows the whole step
            mine = micro_batches(step_idx, rank, world, cfg.micro_batch_size)
            # loss sum, tokens, trained tokens, "stop asked" (summed over processes, so all stop at the same step)
            local = torch.zeros(4, device=accelerator.device, dtype=torch.float64)
            for j, mb in enumerate(mine):
                last = j == len(mine) - 1
                batch = collate([train_ex[i] for i in mb], cfg.packing, pad_id)
                accelerator.gradient_state._set_sync_gradients(last)  # DeepSpeed reads this; DDP uses no_sync
                with contextlib.nullcontext() if last or sharded else accelerator.no_sync(model):
                    ce = token_loss_sum(model, batch, accelerator.device)
                    # DDP averages gradients over processes: scale back up so the step sums over the window
                    accelerator.backward(ce * (world / window_tokens))
                local[0] += ce.detach().double()
                local[1] += batch["tokens"]
                local[2] += sum(train_ex[i].n_trained for i in mb)
            local[3] = float(stop.asked)
            totals = accelerator.reduce(local, "sum")
            loss = (totals[0] / window_tokens).item()
            if not math.isfinite(loss):
                raise TrainingError(_diverged(f"loss is {loss}", progress.step + 1, step_idx, train_ex, cfg))
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
            grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
            if not math.isfinite(grad_norm) and not sharded:
                raise TrainingError(_diverged(f"gradient norm is {grad_norm} (loss {loss:.4f})", progress.step + 1,
                                              step_idx, train_ex, cfg))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            dt = time.perf_counter() - t0
            step_times.append(dt)
            progress.step += 1
            progress.tokens_seen += int(totals[1].item())
            progress.trained_tokens_seen += int(totals[2].item())
            progress.train_time_s += dt
            losses.append(loss)
            recent = step_times[-10:]
            eta = (total_steps - progress.step) * sum(recent) / len(recent)
            row = {"step": progress.step, "epoch": round(progress.step / spe, 4), "loss": round(loss, 6),
                   "lr": lr, "grad_norm": round(grad_norm, 6), "tokens": int(totals[1].item()),
                   "trained_tokens": int(totals[2].item()), "tokens_per_s": round(totals[1].item() / dt, 1),
                   "elapsed_s": round(progress.train_time_s, 3)}
            rows.append(row)
            if log is not None:
                log.write(row)
            if progress.step % cfg.log_steps == 0 or progress.step == total_steps:
                _log(console, f"step {progress.step}/{total_steps} | epoch {row['epoch']:.2f} | loss {loss:.4f} | "
                     f"lr {lr:.2e} | grad {grad_norm:.3f} | {row['tokens_per_s']:,.0f} tok/s | ETA {_fmt_time(eta)}",
                     is_main)

            at_end = progress.step == total_steps
            if cfg.eval_steps and (progress.step % cfg.eval_steps == 0 or at_end):
                eval_loss = _eval_and_sample(model, tokenizer, template, eval_ex, cfg, accelerator, pad_id, stop_ids,
                                             progress.step, log, console, sharded)
            if cfg.save_steps and progress.step % cfg.save_steps == 0 and not at_end:
                ck.save_checkpoint(accelerator, out, progress.step, cfg, fingerprint)
            if totals[3] > 0 and not at_end:  # Ctrl-C / SIGTERM: finish the step, checkpoint, stop
                ck.save_checkpoint(accelerator, out, progress.step, cfg, fingerprint)
                _log(console, f"interrupted: checkpoint of step {progress.step} saved in {out / ck.CKPT_DIR}; run "
                     "the same command again to resume", is_main)
                raise KeyboardInterrupt
        if not cfg.eval_steps and eval_ex:
            eval_loss = _eval_and_sample(model, tokenizer, template, eval_ex, cfg, accelerator, pad_id, stop_ids,
                                         progress.step, log, console, sharded)
    finally:
        stop.restore()
        if log is not None:
            log.close()

    # ---- final artifacts: written beside, checked, then moved in; camelid.json last marks the run finished
    state_dict = accelerator.get_state_dict(model) if sharded else None
    accelerator.wait_for_everyone()
    result = TrainResult(out, progress.step, losses, losses[-1] if losses else None, eval_loss, stats,
                         progress.train_time_s, progress.tokens_seen, _peak_memory_mb(), n_trainable, rows)
    if is_main:
        _finish(accelerator.unwrap_model(model), tokenizer, cfg, base, out, stop_ids, state_dict, result,
                n_total, world, accelerator.mixed_precision, vocab, order)
        _log(console, f"done: {progress.step} steps, final loss {result.final_loss:.4f}"
             + (f", eval loss {eval_loss:.4f}" if eval_loss is not None else "")
             + f", {progress.tokens_seen:,} tokens in {_fmt_time(progress.train_time_s)}, peak memory "
             f"{result.peak_memory_mb:,.0f} MB -> {out}", is_main)
    accelerator.wait_for_everyone()
    return result


class StopRequest:
    """Ctrl-C or SIGTERM asks the loop to stop at the end of the current step (a torn optimizer step would corrupt
    the checkpoint); a second Ctrl-C stops at once."""

    def __init__(self):
        self.asked = False
        self._old: dict = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _examples(files: list[str], cfg: TrainConfig, tokenizer, template, eval_only: bool = False
              ) -> tuple[list[Example], DataStats, dict | None]:
    """(examples, stats, curriculum order info or None) for training (or eval) files: raw text chunks, or records
    in file order or the curriculum's."""
    if cfg.data_format == "text":
        return *text_examples(files, tokenizer, cfg.max_length), None
    records = read_files(files, cfg.data_format)
    order = None
    if cfg.curriculum is not None and not eval_only:
        c = cfg.curriculum
        records, order = order_examples(records, c.rule, c.field, c.stages, cfg.seed)
    return *build_examples(records, tokenizer, template, cfg.mask, cfg.max_length, cfg.truncation), order


def _fingerprint_extra(cfg: TrainConfig, vocab: dict) -> str:
    """The tokenizer's content and the curriculum: a resume must find the same ones (the tokenized examples alone
    could match with another tokenizer that leaves these texts alone)."""
    if cfg.tokenizer is None and cfg.curriculum is None:
        return ""  # fingerprints of runs without them stay what they were
    tok = Path(vocab["tokenizer"]) / "tokenizer.json"
    return json.dumps({"tokenizer": sha256_file(tok) if tok.is_file() else vocab["tokenizer"],
                       "curriculum": cfg.curriculum.model_dump() if cfg.curriculum else None}, sort_keys=True)


def _diverged(what: str, step: int, step_idx: list[int], examples: list[Example], cfg: TrainConfig) -> str:
    ids = ", ".join(examples[i].id for i in step_idx[:5]) + ("..." if len(step_idx) > 5 else "")
    return (f"{what} at step {step} (records {ids}); stopped before the optimizer step, so the weights are those "
            f"of step {step - 1}. Try a lower lr (now {cfg.learning_rate:g}), precision=fp32 or bf16 instead of "
            "fp16, max_grad_norm=1.0, and check those records; a rerun resumes from the last checkpoint")


def _eval_and_sample(model, tokenizer, template, eval_ex, cfg, accelerator, pad_id, stop_ids, step, log, console,
                     sharded) -> float | None:
    eval_loss = evaluate(model, eval_ex, cfg, accelerator, pad_id, sharded)
    if eval_loss is not None:
        _log(console, f"step {step} | eval loss {eval_loss:.4f}", accelerator.is_main_process)
        if log is not None:
            log.write({"step": step, "eval_loss": round(eval_loss, 6)})
    if cfg.eval_prompts and not sharded and accelerator.is_main_process:
        for s in sample(accelerator.unwrap_model(model), tokenizer, template, cfg.eval_prompts, cfg.sample_max_tokens,
                        stop_ids, accelerator.device):
            _log(console, f"  [dim]sample ({s['finish_reason']}, {s['tokens']} tokens):[/] {s['prompt']!r} -> "
                 f"{s['answer']!r}", True)
            log.write({"step": step, "sample": s})
    accelerator.wait_for_everyone()
    return eval_loss


def _finish(model, tokenizer, cfg: TrainConfig, base: Path, out: Path, stop_ids: list[int], state_dict, result,
            n_total: int, world: int, precision: str, vocab: dict, order: dict | None) -> None:
    import torch
    import transformers

    tmp = out / ".final-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    files = save_trained(model, tokenizer, tmp, cfg, base, stop_ids, state_dict)
    plot_losses(out / "trainer_log.jsonl", tmp / "loss.png")
    for name in files + ["loss.png"]:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        os.replace(tmp / name, out / name)
    shutil.rmtree(tmp, ignore_errors=True)
    RunInfo(**{
        "kind": "sft",
        "template": cfg.template,
        "base_model": cfg.model,
        "base_model_path": str(base),
        "method": cfg.method,
        "mask": cfg.mask,
        "data": data_files_info(cfg.data),
        "eval_data": data_files_info(cfg.eval_data),
        "config": cfg.model_dump(),
        "data_stats": result.stats.to_dict(),
        "vocab": vocab,  # tokenizer used, rows added (initialised from base pieces), what trained besides an adapter
        "curriculum": order,  # rule, field, stages (size, first/last id), first trained ids; null = shuffled
        "steps": result.steps,
        "final_loss": result.final_loss,
        "eval_loss": result.eval_loss,
        "train_time_s": round(result.train_time_s, 3),
        "tokens_seen": result.tokens_seen,
        "peak_memory_mb": round(result.peak_memory_mb, 1),
        "trainable_params": result.trainable_params,
        "total_params": n_total,
        "world_size": world,
        "precision": precision,
        "stop_token_ids": stop_ids,
        "versions": {"camelid": getattr(camelid, "__version__", "0"), "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }).write(out)
