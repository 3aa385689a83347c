"""The CUDA paths of train, serve and eval, run where users run them, side by side with trl.

Models are built from configs with random weights (no download is possible on a lent GPU machine): the SmolLM2-135M
architecture and a ~1B Llama-shaped one (hidden 2048, 16 layers, GQA 32/8), with the embedded tokenizer. Random
weights measure speed and memory as trained ones do; correctness is checked with losses and equalities only.

Parts (each guarded: a failing part is recorded with its error and the others still run; results are rewritten
to OUT/gpu_results.json after every part, so a run cut short keeps what it measured):
  train       camelid `train()` per method (lora, full, qlora when bitsandbytes has CUDA), packing on/off and
              gradient checkpointing on/off, on the 175 seed tasks in the alpaca template; and trl's SFTTrainer with
              its fastest settings (bf16, padding_free, checkpointing off and on) on the same model, data and batch.
              Reported: real (non-pad) tokens/s over the steps after the warm-up ones, peak GPU memory
              (torch.cuda.max_memory_allocated, model load included), first-step loss.
  invariants  packed == padded and batch 8 x accumulation 1 == batch 1 x 8, through `train()` (dropout 0), first
              step loss in fp32 and bf16.
  answer      `HFModel` greedy tokens on CUDA (bf16, what chat/serve/eval use; and fp32) vs CPU fp32: equal first N,
              or the first divergence with the fp32 top-1/top-2 logit margin there; `camelid ask` and
              `camelid eval answer --device cuda` through the CLI, the trained LoRA run loaded on CUDA.
  serve       `camelid serve --device cuda` answering the `openai` client (plain and streaming).
  fsdp        `accelerate launch --config_file <shipped fsdp.yaml> --num_processes 1 -m camelid train ...`.

    python bench/gpu.py                      # on a GPU machine: both models, every part
    python bench/gpu.py --tiny               # CPU: a 2-layer model, a few steps (the test suite runs this)
    python bench/gpu.py --tokenizer DIR --out DIR --budget-s 420 --parts invariants,train,answer,serve,fsdp

On a machine without internet: carry the embedded tokenizer's files (tokenizer.json, tokenizer_config.json,
chat_template.jinja) for --tokenizer, and cp312 wheels of what its image lacks (the run in bench/results/gpu_h200.json
carried pydantic, fastapi, starlette, uvicorn, openai and its httpx2, rapidfuzz, trl, datasets, dill, multiprocess,
bitsandbytes with only its cuda130 library, and transformers 5.24 / peft 0.21.2, the versions a pip install gives
today, over the image's older ones: 24 MB as one tar.gz). The whole run took 309 s on an H200.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "src" / "camelid" / "generate" / "seeds" / "seed_tasks_en.jsonl"  # the 175 Self-Instruct seeds
FSDP_CONFIG = ROOT / "src" / "camelid" / "train" / "configs" / "fsdp.yaml"
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
LR = {"lora": 3e-4, "qlora": 2e-4, "full": 2e-5}
PROMPTS = ["Give three tips for staying healthy.", "What is the capital of France?"]
SHAPES = {  # LlamaConfig fields; vocab and special tokens come from the tokenizer
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=True),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
                     tie_word_embeddings=True),
}
ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
       "TQDM_DISABLE": "1"}  # progress bars would crowd out the table in a captured log


class Skip(Exception):
    """A part or run that cannot run here (said in the results, not an error)."""


class Bench:
    def __init__(self, args):
        import torch

        self.args = args
        self.cuda = torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        self.deadline = time.monotonic() + args.budget_s
        self.reserve = 0.0  # seconds kept for the parts after the current one
        self.tmp = Path(tempfile.mkdtemp(prefix="camelid-gpu-"))
        self.models: dict[str, Path] = {}
        self.lora_runs: dict[str, Path] = {}
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results: dict = {"settings": {k: str(v) for k, v in vars(args).items()}, "env": env_info(), "parts": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def need(self, seconds: float, what: str) -> None:
        if self.left() < seconds + self.reserve:
            raise Skip(f"{what}: time budget spent ({self.left():.0f} s left, about {seconds:.0f} s needed)")

    def save(self) -> None:
        tmp = self.out / ".gpu_results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
        os.replace(tmp, self.out / "gpu_results.json")

    def guarded(self, part: str, fn) -> None:
        t0 = time.monotonic()
        rec: dict = {}
        self.results["parts"][part] = rec
        try:
            rec.update(fn() or {})
            rec["status"] = "ok"
        except Skip as e:
            rec.update(status="skipped", reason=str(e))
        except BaseException as e:  # noqa: BLE001 - reported, then the next part runs
            if isinstance(e, KeyboardInterrupt):
                raise
            rec.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
        rec["seconds"] = round(time.monotonic() - t0, 1)
        free_gpu()
        self.save()
        print(f"== {part}: {rec['status']} ({rec['seconds']} s)"
              + (f" {rec.get('reason') or rec.get('error')}" if rec["status"] != "ok" else ""), flush=True)


def env_info() -> dict:
    import platform

    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gb=round(torch.cuda.mem_get_info()[1] / 2**30, 1))
    for name in ("peft", "accelerate", "trl", "datasets", "bitsandbytes", "fastapi", "openai"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001 - recorded: that package's part will say why it did not run
            info[name] = f"unavailable: {type(e).__name__}: {str(e)[:200]}"
    return info


def free_gpu() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def resident_mb() -> float:
    import torch

    return torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


# ------------------------------------------------------------------------------------------------ models


def tokenizer_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    from camelid.models.checkpoint import embedded_hf_dir

    return embedded_hf_dir()


def build_model(shape: str, out: Path, tok_dir: Path, device: str) -> Path:
    """A random-weight Llama checkpoint with the embedded tokenizer (safetensors; fp32 up to 135M, else bf16)."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=pad, **SHAPES[shape])
    dtype = torch.bfloat16 if shape == "llama-1b" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # initialising 1B weights on the GPU takes a second, on the CPU far longer
        model = LlamaForCausalLM(cfg).to(dtype)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=pad,
                                               bos_token_id=tok.bos_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    del model
    free_gpu()
    return out


# ------------------------------------------------------------------------------------------------ camelid


def camelid_run(b: Bench, model: str, method: str, packing: bool, gc_on: bool, *, steps: int, micro: int,
                batch: int, precision: str | None = None, dropout: float | None = None, tag: str = "") -> dict:
    from camelid.train.config import load_config
    from camelid.train.sft import train

    lora = dict(LORA, dropout=LORA["dropout"] if dropout is None else dropout)
    out = b.tmp / "runs" / f"{model}-{method}-{int(packing)}{int(gc_on)}{tag}"
    cfg = load_config(None, [], model=f"hf:{b.models[model]}", template="alpaca", data=[str(b.args.data)],
                      method=method, lora=lora, lr=LR[method], micro_batch_size=micro, global_batch_size=batch,
                      max_steps=steps, max_length=b.args.max_length, packing=packing, gradient_checkpointing=gc_on,
                      precision=precision or ("bf16" if b.cuda else "fp32"), warmup_ratio=0.0, output_dir=str(out),
                      overwrite=True, seed=0)
    before = resident_mb()
    t0 = time.perf_counter()
    r = train(cfg)
    wall = time.perf_counter() - t0
    w = min(b.args.warmup, len(r.log) - 1)
    timed = r.log[w:]
    secs = r.log[-1]["elapsed_s"] - (r.log[w - 1]["elapsed_s"] if w else 0.0)
    return {"tokens_per_s": sum(x["tokens"] for x in timed) / secs, "peak_mb": round(r.peak_memory_mb, 1),
            "first_loss": r.losses[0], "losses": r.losses, "steps": r.steps, "timed_steps": len(timed),
            "resident_before_mb": round(before, 1), "wall_s": round(wall, 1), "output_dir": str(out)}


# ------------------------------------------------------------------------------------------------ trl


def trl_run(b: Bench, model: str, method: str, gc_on: bool, *, steps: int, batch: int) -> dict:
    """trl's SFTTrainer at its fastest: bf16, padding_free (one row per batch, like camelid's packing), same model
    dtype as camelid (LoRA: bf16 base; full: fp32 weights under bf16 autocast), same batch and LoRA settings."""
    import torch
    from accelerate.state import AcceleratorState
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from camelid.core.templates import get_template
    from camelid.data.formats import read_conversations

    AcceleratorState._reset_state()  # camelid's last run set mixed precision; the Trainer sets its own
    path = b.models[model]
    tok = AutoTokenizer.from_pretrained(path)
    t = get_template("alpaca")
    rows = [{"prompt": t.render(c["messages"][:1], add_generation_prompt=True),  # trl appends the EOS
             "completion": c["messages"][1]["content"]} for c in read_conversations(b.args.data)]
    before = resident_mb()
    if b.cuda:
        torch.cuda.reset_peak_memory_stats()
    dtype = torch.bfloat16 if method == "lora" and b.cuda else torch.float32
    net = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(b.device)
    conf = SFTConfig(output_dir=str(b.tmp / "trl" / f"{model}-{method}-{int(gc_on)}"), per_device_train_batch_size=batch,
                     gradient_accumulation_steps=1, max_steps=steps, learning_rate=LR[method],
                     lr_scheduler_type="cosine", warmup_steps=0, max_length=None, padding_free=True,
                     logging_steps=1, save_strategy="no", report_to=[], seed=0, bf16=b.cuda, use_cpu=not b.cuda,
                     dataloader_num_workers=0, gradient_checkpointing=gc_on, disable_tqdm=True)
    peft = (LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                       target_modules=LORA["target_modules"], task_type="CAUSAL_LM") if method == "lora" else None)
    tr = SFTTrainer(model=net, args=conf, train_dataset=Dataset.from_list(rows), processing_class=tok,
                    peft_config=peft)
    tokens: list[int] = []
    collate = tr.data_collator

    def counting(feats):
        batch_ = collate(feats)
        m = batch_.get("attention_mask")
        tokens.append(int(m.sum()) if m is not None else int(batch_["input_ids"].numel()))
        return batch_

    tr.data_collator = counting
    ends: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            sync()
            ends.append(time.perf_counter())

        def on_step_end(self, *a, **k):  # step k's time = end of k - end of k-1: data, forward, backward, step, log
            sync()
            ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    def sync():
        if b.cuda:
            torch.cuda.synchronize()

    tr.add_callback(Clock())
    t0 = time.perf_counter()
    tr.train()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if b.cuda else float("nan")
    w = min(b.args.warmup, steps - 1)
    dts = [e - s for s, e in zip(ends, ends[1:])]
    res = {"tokens_per_s": sum(tokens[w:steps]) / sum(dts[w:steps]), "peak_mb": round(peak, 1),
           "first_loss": losses[0] if losses else None, "losses": losses, "steps": len(dts), "timed_steps": steps - w,
           "resident_before_mb": round(before, 1), "wall_s": round(wall, 1),
           "gradient_checkpointing": bool(getattr(tr.model, "is_activation_checkpointing",
                                                      getattr(tr.model, "is_gradient_checkpointing", False)))}
    del tr, net
    return res


# ------------------------------------------------------------------------------------------------ parts


def part_build(b: Bench) -> dict:
    tok = tokenizer_dir(b.args.tokenizer)
    out = {}
    if b.args.records:  # the first N records only (--tiny: tokenizing all 175 per run would dominate a CPU check)
        lines = b.args.data.read_text(encoding="utf-8").splitlines(keepends=True)[:b.args.records]
        b.args.data = b.tmp / f"first{b.args.records}.jsonl"
        b.args.data.write_text("".join(lines), encoding="utf-8")
        out["records"] = len(lines)
    for name in b.args.models.split(","):
        t0 = time.perf_counter()
        b.models[name] = build_model(name, b.tmp / "models" / name, tok, b.device)
        out[name] = {"seconds": round(time.perf_counter() - t0, 1), "config": SHAPES[name]}
    return out


def bnb_cuda() -> str | None:
    """None when QLoRA can run here, else why not."""
    if not __import__("torch").cuda.is_available():
        return "no CUDA here (QLoRA is measured on the GPU run)"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"bitsandbytes unavailable: {type(e).__name__}: {e}"
    return None


def part_train(b: Bench) -> dict:
    """camelid's methods and settings, then trl's fastest, per model; each run guarded on its own."""
    a = b.args
    out: dict = {}
    qlora_off = bnb_cuda()
    for model in a.models.split(","):
        runs: dict = {}
        out[model] = runs
        # most telling first, so a spent budget drops the least telling runs
        plan = [(who, m, True, g) for g in (False, True) for m in ("lora", "full") for who in ("camelid", "trl")]
        plan += [("camelid", m, False, False) for m in ("lora", "full")] + [("camelid", "qlora", True, False)]
        if a.tiny:  # every code path once: lora/full, packed/padded, checkpointing off/on, trl, qlora's skip
            plan = [("camelid", "lora", True, False), ("trl", "lora", True, False), ("camelid", "full", False, True),
                    ("camelid", "qlora", True, False)]
        for who, method, packing, gc_on in plan:
            key = f"{who} {method} {'packed' if packing else 'padded'}{' gc' if gc_on else ''}"
            if who == "trl":
                key = f"trl {method} padding_free{' gc' if gc_on else ''}"
            t0 = time.perf_counter()
            try:
                if method == "qlora" and qlora_off:
                    raise Skip(qlora_off)
                b.need(a.run_budget_s * (4 if model == "llama-1b" else 1), key)
                if who == "camelid":
                    runs[key] = camelid_run(b, model, method, packing, gc_on, steps=a.steps, micro=a.batch,
                                            batch=a.batch)
                    if method == "lora" and packing and not gc_on:
                        b.lora_runs[model] = Path(runs[key].pop("output_dir"))
                    else:
                        shutil.rmtree(runs[key].pop("output_dir"), ignore_errors=True)
                else:
                    __import__("trl")
                    runs[key] = trl_run(b, model, method, gc_on, steps=a.steps, batch=a.batch)
                runs[key]["status"] = "ok"
            except Skip as e:
                runs[key] = {"status": "skipped", "reason": str(e)}
            except Exception as e:  # noqa: BLE001 - this run is reported, the next one runs
                runs[key] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc()[-2500:]}
            runs[key]["seconds"] = round(time.perf_counter() - t0, 1)
            free_gpu()
            b.save()
            print(f"  {model:>13} | {key:<28} | {fmt_run(runs[key])}", flush=True)
    return {"models": out}


def fmt_run(r: dict) -> str:
    if r.get("status") != "ok":
        return f"{r.get('status')}: {(r.get('reason') or r.get('error') or '')[:160]}"
    return (f"{r['tokens_per_s']:9.0f} tok/s | peak {r['peak_mb']:8.0f} MB | first loss {r['first_loss']:.4f} | "
            f"{r['seconds']:.0f} s")


def part_invariants(b: Bench) -> dict:
    """Through train(): the first step's loss (and the second's, after one AdamW step) must not depend on packing
    or on how a step is cut into micro-batches. Dropout 0; LoRA; the first model."""
    model = b.args.models.split(",")[0]
    precisions = ["fp32", "bf16"] if b.cuda else ["fp32"]
    tol = {"fp32": 1e-4, "bf16": 1e-2}  # relative, on the first step's loss
    out: dict = {"model": model, "tolerance_relative_first_step": tol}
    for prec in precisions:
        b.need(60, f"invariants {prec}")
        runs = {}
        n = b.args.invariant_batch
        for name, packing, micro in ((f"packed {n}x1", True, n), (f"padded {n}x1", False, n), (f"packed 1x{n}", True, 1)):
            r = camelid_run(b, model, "lora", packing, False, steps=2, micro=micro, batch=n, precision=prec,
                            dropout=0.0, tag=f"-inv-{prec}-{micro}")
            shutil.rmtree(r["output_dir"], ignore_errors=True)
            runs[name] = r["losses"]
            free_gpu()
        ref = runs[f"packed {n}x1"]
        checks = {}
        for name in (f"padded {n}x1", f"packed 1x{n}"):
            rel = [abs(x - y) / abs(y) for x, y in zip(runs[name], ref)]
            checks[f"{name} vs packed {n}x1"] = {"relative_diff_per_step": rel, "pass": rel[0] <= tol[prec]}
        out[prec] = {"losses": runs, "checks": checks}
    out["all_pass"] = all(c["pass"] for p in precisions for c in out[p]["checks"].values())
    return out


def greedy_ids(m, prompt: str, n: int) -> list[int]:
    import torch

    from camelid.core.tokenize import encode

    ids, _ = encode(m.tokenizer, m.template, [{"role": "user", "content": prompt}], add_generation_prompt=True)
    with torch.no_grad():
        out = m.model.generate(input_ids=torch.tensor([ids], device=m.model.device), attention_mask=None,
                               max_new_tokens=n, min_new_tokens=n, do_sample=False, temperature=None, top_p=None,
                               top_k=None, pad_token_id=m.tokenizer.eos_token_id)
    return out[0][len(ids):].tolist(), ids


def compare_greedy(ref, other, prompts: list[str], n: int) -> list[dict]:
    """First N greedy tokens equal, or where they first differ and by how little fp32 separated the top two."""
    import torch

    rows = []
    for p in prompts:
        a, ids = greedy_ids(ref, p, n)
        c, _ = greedy_ids(other, p, n)
        k = next((i for i, (x, y) in enumerate(zip(a, c)) if x != y), None)
        row = {"prompt": p, "equal_tokens": n if k is None else k, "of": n}
        if k is not None:
            with torch.no_grad():
                logits = ref.model(input_ids=torch.tensor([ids + a[:k]]), use_cache=False).logits[0, -1].float()
            top = torch.topk(logits, 2)
            row.update(ref_token=a[k], other_token=c[k],
                       fp32_top2_margin=round(float(top.values[0] - top.values[1]), 6),
                       other_token_fp32_gap=round(float(top.values[0] - logits[c[k]]), 6))
        rows.append(row)
    return rows


def part_answer(b: Bench) -> dict:
    from camelid.models.base import Sampling
    from camelid.models.hf import HFModel

    model = b.args.models.split(",")[0]
    path = b.models[model]
    n = b.args.answer_tokens
    cpu = HFModel(path, device="cpu")  # fp32: the reference
    dev = HFModel(path, device=b.device)  # what chat/serve/eval load: bf16 on CUDA
    out: dict = {"model": model, "device": b.device, "dtype": str(next(dev.model.parameters()).dtype)}
    out["greedy_vs_cpu_fp32"] = compare_greedy(cpu, dev, PROMPTS, n)
    if b.cuda:  # the same fp32 weights moved to the GPU: differences are then the kernels', not bf16's
        same = SimpleNamespace(model=copy.deepcopy(cpu.model).to(b.device), tokenizer=cpu.tokenizer,
                               template=cpu.template)
        out["greedy_cuda_fp32_vs_cpu_fp32"] = compare_greedy(cpu, same, PROMPTS, n)
        del same
    greedy = Sampling(temperature=0.0, max_tokens=n)
    text = dev.chat([{"role": "user", "content": PROMPTS[0]}], greedy).text
    out["hfmodel_text"] = text
    del cpu
    free_gpu()
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    ask = subprocess.run([sys.executable, "-m", "camelid", "ask", PROMPTS[0], "--model", f"hf:{path}", "-t", "0",
                          "--max-tokens", str(n), "--json"], capture_output=True, text=True, env=env, timeout=300)
    if ask.returncode:
        raise RuntimeError(f"camelid ask exited {ask.returncode}: {ask.stderr[-1500:]}")
    got = json.loads(ask.stdout)
    out["ask"] = {"text_equals_hfmodel": got["text"] == text, "backend": got.get("backend"),
                  "completion_tokens": got.get("completion_tokens")}
    q = b.tmp / "questions.txt"
    q.write_text("\n".join(PROMPTS) + "\n")
    ans = b.tmp / "answers.jsonl"
    cmd = [sys.executable, "-m", "camelid", "eval", "answer", "-q", str(q), "-o", str(ans), "--model", f"hf:{path}",
           "--device", b.device, "-t", "0", "--max-tokens", str(n)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if r.returncode:
        raise RuntimeError(f"camelid eval answer exited {r.returncode}: {r.stderr[-1500:]}")
    rows = [json.loads(x) for x in ans.read_text().splitlines()]
    out["eval_answer"] = {"rows": len(rows),  # eval answer stores the answer stripped (answer.py)
                          "first_equals_hfmodel": rows[0]["choices"][0]["turns"][0] == text.strip()}
    if model in b.lora_runs:  # the adapter camelid trained on this device, loaded onto it
        run = HFModel(b.lora_runs[model], device=b.device)
        out["trained_lora_run"] = {"template": run.template.name if run.template else None,
                                   "answer": run.chat([{"role": "user", "content": PROMPTS[1]}], greedy).text}
        del run
    del dev
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def part_serve(b: Bench) -> dict:
    import httpx
    from openai import OpenAI

    from camelid.models.base import Sampling
    from camelid.models.hf import HFModel

    model = b.args.models.split(",")[0]
    path, n = b.models[model], b.args.answer_tokens
    m = HFModel(path, device=b.device)
    want = m.chat([{"role": "user", "content": PROMPTS[0]}], Sampling(temperature=0.0, max_tokens=n)).text
    del m
    free_gpu()
    port = free_port()
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    log = open(b.tmp / "serve.log", "w+")
    p = subprocess.Popen([sys.executable, "-m", "camelid", "serve", "--model", f"hf:{path}", "--device", b.device,
                          "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        while True:
            if p.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"camelid serve exited {p.returncode}: {log.read()[-1500:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > 180:
                raise RuntimeError("camelid serve did not answer /v1/models within 180 s")
            time.sleep(0.5)
        ready = time.monotonic() - t0
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        name = client.models.list().data[0].id
        msg = [{"role": "user", "content": PROMPTS[0]}]
        t1 = time.monotonic()
        plain = client.chat.completions.create(model=name, messages=msg, temperature=0, max_tokens=n)
        plain_s = time.monotonic() - t1
        parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=name, messages=msg, temperature=0, max_tokens=n, stream=True) if c.choices]
        text = plain.choices[0].message.content
        return {"model": model, "device": b.device, "ready_s": round(ready, 1), "served_name": name,
                "plain_equals_in_process": text == want, "stream_equals_plain": "".join(parts) == text,
                "completion_tokens": plain.usage.completion_tokens if plain.usage else None,
                "plain_request_s": round(plain_s, 2), "finish_reason": plain.choices[0].finish_reason}
    finally:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()


def part_fsdp(b: Bench) -> dict:
    if not b.cuda:
        raise Skip("needs CUDA (accelerate launch on CPU wants MPI)")
    model = b.args.models.split(",")[0]
    out = b.tmp / "runs" / "fsdp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG), "--num_processes",
           "1", "-m", "camelid", "train", f"model=hf:{b.models[model]}", f"data=[{b.args.data}]", "template=alpaca",
           "method=full", "max_steps=3", "micro_batch_size=4", "global_batch_size=8", f"max_length={b.args.max_length}",
           f"output_dir={out}", "warmup_ratio=0"]
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if r.returncode:
        raise RuntimeError(f"accelerate launch (fsdp) exited {r.returncode}: {(r.stdout + r.stderr)[-2500:]}")
    summary = json.loads((out / "camelid.json").read_text())
    return {"model": model, "steps": summary["steps"], "final_loss": summary["final_loss"],
            "precision": summary["precision"], "peak_memory_mb": summary["peak_memory_mb"],
            "files": sorted(p.name for p in out.iterdir()), "log_tail": r.stdout[-600:]}


PARTS = {"invariants": part_invariants, "train": part_train, "answer": part_answer, "serve": part_serve,
         "fsdp": part_fsdp}
COST_S = {"invariants": 40, "train": 0, "answer": 30, "serve": 30, "fsdp": 40}  # on a GPU; reserved by earlier parts


# ------------------------------------------------------------------------------------------------ report


def table(results: dict) -> str:
    lines = []
    for model, runs in ((results["parts"].get("train") or {}).get("models") or {}).items():
        best = {}  # method -> trl's fastest run of that method (checkpointing off or on)
        for key, r in runs.items():
            method = key.split()[1]
            if key.startswith("trl") and r.get("status") == "ok" and r["tokens_per_s"] > best.get(method, {}).get(
                    "tokens_per_s", 0):
                best[method] = r
        lines.append(f"\n{model}: real tokens/s (steps after warm-up) | peak GPU MB | first-step loss | vs trl's "
                     "fastest run of the same method: speed, memory")
        for key, r in runs.items():
            peer = best.get(key.split()[1])
            ratio = (f" | {r['tokens_per_s'] / peer['tokens_per_s']:.2f}x speed, {r['peak_mb'] / peer['peak_mb']:.2f}x "
                     "memory" if peer and r.get("status") == "ok" and key.startswith("camelid") else "")
            lines.append(f"  {key:<28} {fmt_run(r)}{ratio}")
    inv = results["parts"].get("invariants") or {}
    for prec in ("fp32", "bf16"):
        for name, c in ((inv.get(prec) or {}).get("checks") or {}).items():
            lines.append(f"invariant {prec} {name}: first step rel diff {c['relative_diff_per_step'][0]:.2e} "
                         f"({'pass' if c['pass'] else 'FAIL'}), second {c['relative_diff_per_step'][-1]:.2e}")
    ans = results["parts"].get("answer") or {}
    for key in ("greedy_vs_cpu_fp32", "greedy_cuda_fp32_vs_cpu_fp32"):
        for row in ans.get(key) or []:
            lines.append(f"{key}: {row['equal_tokens']}/{row['of']} equal"
                         + (f", fp32 top-2 margin there {row['fp32_top2_margin']}" if "fp32_top2_margin" in row else ""))
    for part, rec in results["parts"].items():
        lines.append(f"part {part}: {rec.get('status')} ({rec.get('seconds')} s)"
                     + (f" {(rec.get('reason') or rec.get('error') or '')[:200]}" if rec.get("status") != "ok" else ""))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model, a few steps: checks the script on a CPU")
    ap.add_argument("--models", default=None, help="comma-separated shapes (default smollm2-135m,llama-1b)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"any of {','.join(PARTS)}")
    ap.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the embedded model's)")
    ap.add_argument("--data", type=Path, default=SEEDS)
    ap.add_argument("--records", type=int, default=None, help="train on the first N records (--tiny: 24)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu-results")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per training run (default 10)")
    ap.add_argument("--warmup", type=int, default=None, help="first steps left out of tokens/s (default 3)")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step, one micro-batch (both contenders)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--invariant-batch", type=int, default=8, help="sequences per step in the invariants (N x 1 "
                    "vs 1 x N); --tiny: 4")
    ap.add_argument("--answer-tokens", type=int, default=32)
    ap.add_argument("--budget-s", type=float, default=420, help="runs that would start after this are skipped")
    ap.add_argument("--run-budget-s", type=float, default=15, help="time one 135M training run is assumed to need")
    args = ap.parse_args()
    args.models = args.models or ("tiny" if args.tiny else "smollm2-135m,llama-1b")
    args.steps = args.steps or 10
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    if args.tiny:
        args.batch, args.answer_tokens = min(args.batch, 4), min(args.answer_tokens, 8)
        args.records, args.invariant_batch, args.max_length = args.records or 16, min(args.invariant_batch, 4), 128
        args.steps = min(args.steps, 2)
    os.environ.update(ENV)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    b = Bench(args)
    print(f"device {b.device} | {b.results['env']} | models {args.models} | {args.steps} steps of {args.batch} "
          f"sequences | budget {args.budget_s:.0f} s", flush=True)
    try:
        b.guarded("build", lambda: part_build(b))
        if b.results["parts"]["build"]["status"] == "ok":
            names = args.parts.split(",")
            if set(names) - set(PARTS):
                raise SystemExit(f"--parts: unknown {sorted(set(names) - set(PARTS))}; choose from {', '.join(PARTS)}")
            for i, name in enumerate(names):
                b.reserve = sum(COST_S[n] for n in names[i + 1:]) if b.cuda else 0.0
                b.guarded(name, lambda fn=PARTS[name]: fn(b))
        print(table(b.results), flush=True)
        print(f"results: {b.out / 'gpu_results.json'}")
    finally:
        shutil.rmtree(b.tmp, ignore_errors=True)
    failed = [p for p, r in b.results["parts"].items() if r["status"] == "failed"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
