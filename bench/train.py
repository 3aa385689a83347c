"""Training speed and memory: camelid vs trl's SFTTrainer, same model, data, LoRA settings and hardware.

Model: the embedded SmolLM2-135M (fp32 on CPU). Data: the 175 Self-Instruct seed tasks (../shared/data, else
camelid's shipped seeds) in the Alpaca template. LoRA r 8 / alpha 16 / dropout 0.05 on q/v, AdamW lr 3e-4, 8
sequences per step, max_length 256.

1. Memory: each contender trains for real in its own subprocess (`camelid.train.sft.train`, `SFTTrainer.train`);
   peak RSS is the kernel's ru_maxrss of that process alone (wait4), measured before this process loads anything.
2. Speed, side by side in one process: the same batches of records go through camelid's step (padding-free packed
   row, logits only on trained tokens) and trl's own `SFTTrainer.training_step` (its collator, loss and backward)
   plus an AdamW step, alternating contender order every batch so machine noise hits both alike. Contenders:
   `trl` (SFTTrainer defaults: padded batches, gradient checkpointing on) and `trl-no-gc` (checkpointing off). Reported: real (non-padding) tokens/s = real tokens / seconds, and the ratio per batch.
3. Loss: camelid's and trl's loss on the same first batch (camelid's tokens), which must agree, and how many
   records trl tokenizes differently (it tokenizes prompt + answer as one string, so tokens merge across the
   boundary: it trains on a prompt that differs from the one served at inference).

    python bench/train.py [--batches 6] [--rounds 2] [--memory-steps 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
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
ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1"}


def seeds_path() -> Path:
    return SHARED_SEEDS if SHARED_SEEDS.is_file() else SHIPPED_SEEDS


# ------------------------------------------------------------------------------------------------ contenders


def camelid_config(args, out: Path, steps: int):
    from camelid.train.config import load_config

    return load_config(None, [], model="embedded", template="alpaca", data=[str(args.data)], method="lora",
                       lora=LORA, lr=3e-4, micro_batch_size=args.batch, global_batch_size=args.batch,
                       max_steps=steps, max_length=args.max_length, packing=True, warmup_ratio=0.0,
                       precision="fp32", output_dir=str(out), seed=0)


def camelid_examples(args, tok) -> dict[int, object]:
    """Record index -> camelid's Example (what camelid trains on)."""
    from camelid.core.templates import get_template
    from camelid.data.examples import build_examples, read_files

    convs = [{**c, "id": str(i)} for i, c in enumerate(read_files([args.data]))]
    t = get_template("alpaca", None, tok.bos_token, tok.eos_token)
    return {int(e.id): e for e in build_examples(convs, tok, t, max_length=args.max_length)[0]}


TRL_SETTINGS = {  # contender -> (gradient checkpointing, packing with bfd + padding_free)
    "trl": (True, False), "trl-no-gc": (False, False), "trl-packed": (True, True), "trl-packed-no-gc": (False, True)}


def trl_trainer(args, out: Path, steps: int, name: str):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from camelid.core.templates import get_template
    from camelid.data.formats import read_conversations
    from camelid.models.checkpoint import embedded_hf_dir

    base = embedded_hf_dir()
    tok = AutoTokenizer.from_pretrained(base)
    t = get_template("alpaca")
    rows = [{"prompt": t.render(c["messages"][:1], add_generation_prompt=True),  # trl appends the EOS
             "completion": c["messages"][1]["content"], "idx": i} for i, c in enumerate(read_conversations(args.data))]
    checkpointing, packed = TRL_SETTINGS[name]
    # trl's fastest settings: packing (best-fit decreasing) into padding-free rows with position_ids
    extra = {"packing": True, "packing_strategy": "bfd", "padding_free": True} if packed else {}
    conf = SFTConfig(output_dir=str(out), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                     max_steps=steps, learning_rate=3e-4, lr_scheduler_type="cosine", warmup_steps=0,
                     max_length=args.max_length, logging_steps=1, save_strategy="no", report_to=[], seed=0,
                     bf16=False, use_cpu=True, dataloader_num_workers=0, gradient_checkpointing=checkpointing,
                     **extra)
    peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return SFTTrainer(model=model, args=conf, train_dataset=Dataset.from_list(rows), processing_class=tok,
                      peft_config=peft), tok


# ------------------------------------------------------------------------------------------------ 1. speed


def real_tokens(inputs: dict) -> int:
    """Non-padding tokens of a trl batch (padding-free batches have no attention_mask and no padding)."""
    return int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else int(inputs["input_ids"].numel())


def speed(args) -> dict:
    import torch

    from camelid.data.examples import collate
    from camelid.train.model import load_for_training
    from camelid.train.sft import token_loss_sum

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    cam_model, tok, _ = load_for_training(camelid_config(args, tmp / "c", 1), "cpu", False)
    cam = camelid_examples(args, tok)
    trainers = {name: trl_trainer(args, tmp / name, 1, name)[0]
                for name in args.contenders.split(",") if name.startswith("trl")}
    # packed contenders get the same records as everyone, through their own padding-free collator (one row with
    # position_ids per batch); their bfd packing only regroups records, which the memory runs include
    ref = next((tr for n, tr in trainers.items() if not TRL_SETTINGS[n][1]), None) or trl_trainer(
        args, tmp / "ref", 1, "trl")[0]
    trl_rows = {row["idx"]: row for row in ref.train_dataset}
    common = sorted(set(cam) & set(trl_rows))
    random.Random(0).shuffle(common)
    batches = [common[i:i + args.batch] for i in range(0, args.batch * args.batches, args.batch)]

    loss = same_batch_loss(args, cam_model, cam, {"ref": ref, **trainers}, batches[0], tok)  # before training: lora_B = 0 in both
    opts = {"camelid": torch.optim.AdamW([p for p in cam_model.parameters() if p.requires_grad], lr=3e-4)}
    for name, tr in trainers.items():
        tr.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop, which we drive step by step
        if tr.args.activation_checkpointing:  # what Trainer.train does before its loop
            kw = {k: v for k, v in (tr.args.activation_checkpointing_kwargs or {}).items()
                  if k not in ("every_n_layers", "offload")}
            tr.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw or None)
        tr.model.train()
        opts[name] = torch.optim.AdamW([p for p in tr.model.parameters() if p.requires_grad], lr=3e-4)
    cam_model.train()

    def step(name: str, idx: list[int]) -> tuple[int, float]:
        t0 = time.perf_counter()
        if name == "camelid":
            exs = [cam[i] for i in idx]
            loss = token_loss_sum(cam_model, collate(exs, True, 0), "cpu") / sum(e.n_trained for e in exs)
            loss.backward()
            real = sum(len(e.input_ids) for e in exs)
        else:
            tr = trainers[name]
            inputs = tr.data_collator([ref.train_dataset[trl_pos[i]] for i in idx])
            real = real_tokens(inputs)
            tr.training_step(tr.model, inputs)
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        return real, time.perf_counter() - t0

    trl_pos = {row["idx"]: k for k, row in enumerate(ref.train_dataset)}
    names = ["camelid", *trainers]
    step("camelid", batches[0])  # warm-up, untimed
    for n in trainers:
        step(n, batches[0])
    per: dict[str, list[tuple[int, float]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for b, idx in enumerate(batches):
            order = names if (r + b) % 2 == 0 else names[::-1]
            for n in order:
                per[n].append(step(n, idx))
    out = {}
    for n, xs in per.items():
        out[n] = {"tokens_per_s": sum(t for t, _ in xs) / sum(s for _, s in xs),
                  "real_tokens": sum(t for t, _ in xs), "seconds": sum(s for _, s in xs)}
    for n in trainers:
        ratios = [(ct / cs) / (tt / ts) for (ct, cs), (tt, ts) in zip(per["camelid"], per[n])]
        out[n]["camelid_speedup_median_per_batch"] = statistics.median(ratios)
    out["loss"] = loss
    shutil.rmtree(tmp, ignore_errors=True)
    out["trl_checkpointing"] = {n: bool(tr.model.is_gradient_checkpointing) for n, tr in trainers.items()}
    return out


def same_batch_loss(args, cam_model, cam, trainers, idx, tok) -> dict:
    import torch

    from camelid.core.templates import get_template
    from camelid.core.tokenize import encode
    from camelid.data.examples import collate, read_files
    from camelid.train.sft import token_loss_sum

    tr = next(iter(trainers.values()))
    exs = [cam[i] for i in idx]
    cam_model.eval()  # no dropout; both adapters still start at lora_B = 0, so both models are the base model
    tr.model.eval()
    with torch.no_grad():
        ours = token_loss_sum(cam_model, collate(exs, True, 0), "cpu").item() / sum(e.n_trained for e in exs)
        same = tr.data_collator([{"input_ids": e.input_ids, "labels": e.labels} for e in exs])
        trl_same = tr.compute_loss(tr.model, dict(same)).item()  # trl's loss code, same tokens, same function
    convs = read_files([args.data])
    t = get_template("alpaca", None, tok.bos_token, tok.eos_token)
    differ = sum(encode(tok, t, convs[row["idx"]]["messages"])[0][:args.max_length] != row["input_ids"]
                 for row in tr.train_dataset)
    return {"camelid": ours, "trl_on_camelid_tokens": trl_same, "trl_records": len(tr.train_dataset),
            "trl_records_tokenized_differently": differ}


# ------------------------------------------------------------------------------------------------ 2. memory


def worker(args) -> None:
    """One real training run (the process whose peak RSS is measured)."""
    out = Path(tempfile.mkdtemp(prefix="bench-train-"))
    t0 = time.perf_counter()
    if args.worker == "camelid":
        from camelid.train.sft import train

        r = train(camelid_config(args, out / "run", args.memory_steps))
        tokens = r.tokens_seen
    else:
        tr, _ = trl_trainer(args, out / "trl", args.memory_steps, args.worker)
        n = []
        collate = tr.data_collator
        tr.data_collator = lambda feats: (lambda b: (n.append(real_tokens(b)), b)[1])(collate(feats))
        tr.train()
        tokens = sum(n[:args.memory_steps])
    print("RESULT " + json.dumps({"tokens": tokens, "seconds": time.perf_counter() - t0}), flush=True)
    shutil.rmtree(out, ignore_errors=True)


def breakdown(args) -> None:
    """Where camelid's peak comes from: the high-water mark of each phase of one step, in its own process."""
    def rss() -> tuple[float, float]:
        with open("/proc/self/status") as f:
            v = {ln.split(":")[0]: int(ln.split()[1]) / 1024 for ln in f if ln.startswith(("VmRSS", "VmHWM"))}
        return v["VmRSS"], v["VmHWM"]

    def reset() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    import torch  # noqa: F401

    from camelid.data.examples import collate
    from camelid.train.model import load_for_training
    from camelid.train.sft import token_loss_sum

    phases = {"runtime (python, torch, transformers)": rss()[0]}
    reset()
    model, tok, _ = load_for_training(camelid_config(args, Path(tempfile.mkdtemp()), 1), "cpu", False)
    now, peak = rss()
    phases["weights resident after loading"] = now - phases["runtime (python, torch, transformers)"]
    phases["loading transient (peak above resident)"] = peak - now
    exs = list(camelid_examples(args, tok).values())[:args.batch]
    batch = collate(exs, True, 0)
    model.train()
    for chunked in (False, True):
        base = rss()[0]
        reset()
        loss = token_loss_sum(model, batch, "cpu", chunked=chunked)
        after_fwd, fwd_peak = rss()
        loss.backward()
        bwd_peak = rss()[1]
        label = "chunked loss" if chunked else "full-vocabulary logits"
        phases[f"forward: kept for backward ({label})"] = after_fwd - base
        phases[f"forward peak above start ({label})"] = fwd_peak - base
        phases[f"backward peak above start ({label})"] = bwd_peak - base
        del loss
        model.zero_grad(set_to_none=True)
    phases["tokens in the step"] = batch["tokens"]
    print("RESULT " + json.dumps(phases), flush=True)


def run_worker(name: str, args) -> tuple[dict, float]:
    """(the worker's RESULT, its peak RSS in MB)."""
    cmd = [sys.executable, __file__, "--worker", name, "--memory-steps", str(args.memory_steps), "--batch",
           str(args.batch), "--max-length", str(args.max_length), "--data", str(args.data)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env={**os.environ, **ENV})
        _, status, usage = os.wait4(p.pid, 0)  # the kernel's peak RSS of this child alone
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not lines:
        raise SystemExit(f"{name} failed (exit {p.returncode}):\n{stderr[-4000:]}")
    return json.loads(lines[-1][7:]), usage.ru_maxrss / 1024


def memory(name: str, args) -> dict:
    res, peak = run_worker(name, args)
    return {"peak_rss_mb": peak, "end_to_end_tokens_per_s": res["tokens"] / res["seconds"]}


# ------------------------------------------------------------------------------------------------ driver


LOAD0 = os.getloadavg()  # the machine is shared: the load is part of the figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=6, help="batches per round in the speed comparison")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--memory-steps", type=int, default=6, help="steps of each real run for peak memory (0: skip)")
    ap.add_argument("--contenders", default="camelid,trl,trl-no-gc,trl-packed,trl-packed-no-gc")
    ap.add_argument("--breakdown", action="store_true", help="also show where camelid's peak comes from")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.data = args.data or seeds_path()
    os.environ.update(ENV)
    if args.worker == "camelid-breakdown":
        return breakdown(args)
    if args.worker:
        return worker(args)

    print(f"data {args.data} | {args.batch} sequences per step | max_length {args.max_length} | LoRA {LORA} | "
          f"{os.cpu_count()} CPU threads", flush=True)
    mem = {}
    if args.memory_steps:  # first, while this process is small: a forked child's ru_maxrss starts at ours
        print(f"\npeak RSS of a real {args.memory_steps}-step run, each in its own process:")
        for n in args.contenders.split(","):
            mem[n] = memory(n, args)
            print(f"  {n:>10}: {mem[n]['peak_rss_mb']:7.0f} MB  (end-to-end incl. loading: "
                  f"{mem[n]['end_to_end_tokens_per_s']:.1f} tokens/s)", flush=True)
        if args.breakdown:
            phases, _ = run_worker("camelid-breakdown", args)
            mem["camelid_breakdown_mb"] = phases
            print("\nwhere camelid's peak comes from (MB, one step of the same batch size, own process):")
            for k, v in phases.items():
                print(f"  {k:<55} {v:8.0f}")
    s = speed(args)
    print(f"\nspeed, side by side on the same {args.batches} x {args.rounds} batches (real tokens/s):")
    for n in args.contenders.split(","):
        extra = (f"  camelid is {s['camelid']['tokens_per_s'] / s[n]['tokens_per_s']:.2f}x (median per batch "
                 f"{s[n]['camelid_speedup_median_per_batch']:.2f}x)" if n != "camelid" else "")
        print(f"  {n:>10}: {s[n]['tokens_per_s']:7.1f} tokens/s{extra}", flush=True)
    loss = s["loss"]
    print(f"\nloss on the same first batch: camelid {loss['camelid']:.5f}, trl's loss code "
          f"{loss['trl_on_camelid_tokens']:.5f}; trl tokenizes {loss['trl_records_tokenized_differently']} of its "
          f"{loss['trl_records']} records differently from the prompt served at inference", flush=True)
    if "camelid" in mem:
        print("\ncamelid against each trl setting (goal: peak <= 0.60x at >= 2x real tokens/s):")
        for n in args.contenders.split(","):
            if n in mem and n != "camelid" and n in s:
                m_ratio = mem["camelid"]["peak_rss_mb"] / mem[n]["peak_rss_mb"]
                v_ratio = s["camelid"]["tokens_per_s"] / s[n]["tokens_per_s"]
                print(f"  vs {n:>16}: peak {m_ratio:.2f}x, speed {v_ratio:.2f}x "
                      f"({'met' if m_ratio <= 0.6 and v_ratio >= 2 else 'not met'})", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "cpus": os.cpu_count(),
                                         "load_avg_start": LOAD0, "load_avg_end": os.getloadavg(),
                                         "settings": {k: str(v) for k, v in vars(args).items()}, "speed": s,
                                         "memory": mem}, indent=2))


if __name__ == "__main__":
    main()
