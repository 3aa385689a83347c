"""Training throughput and memory: camelid vs trl's SFTTrainer, same model, data, LoRA settings and hardware.

Each contender trains in its own subprocess (so peak memory is the kernel's ru_maxrss of that process alone, read
with wait4), on the embedded SmolLM2-135M, the 175 Self-Instruct seed tasks (../shared/data, else camelid's shipped
seeds) rendered with the Alpaca template, LoRA r 8 / alpha 16 / dropout 0.05 on q/v, lr 3e-4, batch 8, accumulation
1, the same number of steps. Contenders run interleaved (camelid, trl, camelid, trl, ...) so machine noise hits both.

- camelid: padding-free packing, logits only on trained tokens (its defaults)
- trl: SFTTrainer defaults (padded batches, completion-only loss on prompt/completion data)
- trl-packed: SFTTrainer with packing=True (BFD packing into max_length rows, padding-free; its fastest mode;
  a row then holds several sequences, so a step sees more tokens) (--contenders camelid,trl,trl-packed)

Reported: real (non-padding) tokens/s over the steps after the first, peak RSS, and each contender's loss on the
same first batch before training (they must agree: same per-token loss).

    python bench/train.py [--steps 12] [--batch 8] [--max-length 256] [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_SEEDS = ROOT.parent / "shared" / "data" / "self-instruct" / "seed_tasks.jsonl"
SHIPPED_SEEDS = ROOT / "src" / "camelid" / "generate" / "seeds" / "seed_tasks_en.jsonl"
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}


def seeds_path() -> Path:
    return SHARED_SEEDS if SHARED_SEEDS.is_file() else SHIPPED_SEEDS


def prompt_completion(path: Path) -> list[dict]:
    """The records as trl's prompt/completion pairs, rendered by camelid's alpaca template (trl adds the EOS)."""
    from camelid.core.templates import get_template
    from camelid.data.formats import read_conversations

    t = get_template("alpaca")
    return [{"prompt": t.render(c["messages"][:1], add_generation_prompt=True),
             "completion": c["messages"][1]["content"]} for c in read_conversations(path)]


# ------------------------------------------------------------------------------------------------ workers


def run_camelid(args, out: Path) -> dict:
    import torch

    from camelid.train.config import load_config
    from camelid.train.data import collate
    from camelid.train.model import load_for_training
    from camelid.train.sft import token_loss_sum, train

    cfg = load_config(None, [], model="embedded", template="alpaca", data=[str(args.data)], method="lora",
                      lora=LORA, lr=3e-4, micro_batch_size=args.batch, global_batch_size=args.batch,
                      max_steps=args.steps, max_length=args.max_length, packing=True, warmup_ratio=0.0,
                      precision="fp32", output_dir=str(out / "run"), seed=0)
    model, tok, _ = load_for_training(cfg, "cpu", False)
    first = camelid_examples(args, tok)[:args.batch]
    model.eval()
    with torch.no_grad():
        first_loss = token_loss_sum(model, collate(first, True, 0), "cpu").item() / sum(e.n_trained for e in first)
    del model
    r = train(cfg)
    rows = r.log[1:]  # the first step warms caches up
    return {"first_batch_loss": first_loss, "losses": r.losses, "tokens": sum(x["tokens"] for x in rows),
            "seconds": sum(x["tokens"] / x["tokens_per_s"] for x in rows), "steps": r.steps}


def run_trl(args, out: Path, packed: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from camelid.models.hf import embedded_hf_dir

    base = embedded_hf_dir()
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    data = Dataset.from_list(prompt_completion(args.data))
    conf = SFTConfig(output_dir=str(out / "trl"), per_device_train_batch_size=args.batch,
                     gradient_accumulation_steps=1, max_steps=args.steps, learning_rate=3e-4,
                     lr_scheduler_type="cosine", warmup_steps=0, max_length=args.max_length, logging_steps=1,
                     save_strategy="no", report_to=[], seed=0, bf16=False,
                     use_cpu=True, dataloader_num_workers=0, packing=packed)
    peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules=LORA["target_modules"], task_type="CAUSAL_LM")

    class Clock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    clock = Clock()
    trainer = SFTTrainer(model=model, args=conf, train_dataset=data, processing_class=tok, peft_config=peft,
                         callbacks=[clock])
    tokens: list[int] = []
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        tokens.append(int(batch["attention_mask"].sum()) if "attention_mask" in batch
                      else int(batch["input_ids"].numel()))
        return batch

    # the loss on the first records: on trl's own tokenization, and on camelid's tokens (the same batch)
    first = collate([trainer.train_dataset[i] for i in range(args.batch)])
    ours = camelid_examples(args, tok)
    same = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in ours[:args.batch]])
    trainer.model.eval()
    with torch.no_grad():
        first_loss = trainer.compute_loss(trainer.model, dict(first)).item()
        same_batch_loss = trainer.compute_loss(trainer.model, dict(same)).item() if not packed else None
    trainer.model.train()
    # trl tokenizes prompt+completion as one string: where tokens merge across the boundary its training
    # sequence differs from the prompt the model is served with
    differ = sum(1 for i, e in enumerate(ours) if i < len(trainer.train_dataset)
                 and trainer.train_dataset[i]["input_ids"] != e.input_ids) if not packed else None
    trainer.data_collator = counting
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # tokens[i] is the batch of step i (the dataloader may prefetch one more; it is not timed)
    return {"first_batch_loss": first_loss, "same_batch_loss": same_batch_loss, "records_tokenized_differently":
            differ, "losses": losses, "tokens": sum(tokens[1:args.steps]), "seconds": sum(clock.times[1:]),
            "steps": len(clock.times)}


def camelid_examples(args, tok):
    from camelid.core.templates import get_template
    from camelid.train.data import build_examples, read_files

    t = get_template("alpaca", None, tok.bos_token, tok.eos_token)
    return build_examples(read_files([args.data]), tok, t, max_length=args.max_length)[0]


def worker(args) -> None:
    out = Path(tempfile.mkdtemp(prefix="bench-train-"))
    if args.worker == "camelid":
        res = run_camelid(args, out)
    else:
        res = run_trl(args, out, packed=args.worker == "trl-packed")
    print("RESULT " + json.dumps(res), flush=True)


# ------------------------------------------------------------------------------------------------ driver


def measure(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--steps", str(args.steps), "--batch", str(args.batch),
           "--max-length", str(args.max_length), "--data", str(args.data)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(p.pid, 0)  # the kernel's peak RSS of this child alone
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    maxrss = usage.ru_maxrss  # KiB on Linux
    lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not lines:
        raise SystemExit(f"{name} failed (exit {p.returncode}):\n{stderr[-4000:]}")
    res = json.loads(lines[-1][7:])
    res.update(name=name, peak_rss_mb=maxrss / 1024, wall_s=time.perf_counter() - t0,
               tokens_per_s=res["tokens"] / res["seconds"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--contenders", default="camelid,trl")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.data = args.data or seeds_path()
    if args.worker:
        return worker(args)

    names = args.contenders.split(",")
    print(f"data {args.data} | batch {args.batch} x {args.steps} steps | max_length {args.max_length} | "
          f"LoRA {LORA} | {os.cpu_count()} CPU threads | {args.rounds} interleaved round(s)", flush=True)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        # the order alternates each round so neither contender always runs on a warmer (or busier) machine
        for n in (names if r % 2 == 0 else names[::-1]):
            res = measure(n, args)
            runs[n].append(res)
            print(f"round {r + 1} {n:>17}: {res['tokens_per_s']:7.1f} tokens/s, peak RSS {res['peak_rss_mb']:7.0f} MB, "
                  f"first-batch loss {res['first_batch_loss']:.4f}, wall {res['wall_s']:.0f} s", flush=True)
    summary = {n: {"tokens_per_s": statistics.median(x["tokens_per_s"] for x in v),
                   "peak_rss_mb": max(x["peak_rss_mb"] for x in v),
                   "first_batch_loss": v[0]["first_batch_loss"],
                   "same_batch_loss": v[0].get("same_batch_loss", v[0]["first_batch_loss"]),
                   "records_tokenized_differently": v[0].get("records_tokenized_differently")}
               for n, v in runs.items()}
    ref = summary.get("trl")
    print("\nmedian tokens/s (real tokens), peak RSS:")
    for n, s in summary.items():
        ratio = f"  {s['tokens_per_s'] / ref['tokens_per_s']:.2f}x trl speed, " \
                f"{s['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x trl memory" if ref and n != "trl" else ""
        print(f"  {n:>17}: {s['tokens_per_s']:7.1f} tokens/s  {s['peak_rss_mb']:7.0f} MB{ratio}")
    if "camelid" in summary and ref:
        print(f"\nloss on the same first batch (camelid's tokens): camelid {summary['camelid']['same_batch_loss']:.5f}"
              f", trl {ref['same_batch_loss']:.5f}; trl on its own tokenization {ref['first_batch_loss']:.5f} "
              f"({ref['records_tokenized_differently']} of the records tokenize differently in trl: prompt and "
              "answer merged at the boundary, unlike the prompt served at inference)")
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                         "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
