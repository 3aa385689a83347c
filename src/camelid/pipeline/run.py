"""`camelid run RECIPE.yaml`: generate -> train -> eval -> (serve) in one run directory.

Each stage writes into `RUN_DIR/<stage>/` and records `RUN_DIR/.stages/<stage>.json`: the hash of its inputs
(its settings plus the digests of the upstream outputs it reads), its status and its summary. A rerun skips a stage
whose inputs hash is unchanged and that finished; an interrupted stage resumes (generation and answers are
append-only, training continues from its last checkpoint); a stage whose inputs changed starts over. The stages call
the same library functions as their commands: nothing here re-implements them.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from camelid.core.cli import console
from camelid.core.columns import using_columns
from camelid.core.io import (CamelidError, read_json, read_records, sha256_file, sha256_json, write_json,
                             write_jsonl)
from camelid.core.tables import data_sha256
from camelid.data.examples import DataStats
from camelid.generate.distill import DistillConfig, distill
from camelid.generate.generator import GenerateConfig, generate
from camelid.generate.prompts import default_seeds
from camelid.models import load_model
from camelid.models.checkpoint import RunInfo
from camelid.pipeline.compare import before_after
from camelid.pipeline.recipe import STAGES, Recipe
from camelid.pipeline.report import write_report
from camelid.serve.server import create_app, serve
from camelid.train.config import load_config
from camelid.train.multistage import run_stages
from camelid.train.sft import train
from camelid.train.vocab import EXTENSION_FILE


# ----------------------------------------------------------------------------------------------- stage state


def is_main_process() -> bool:
    """Under torchrun/accelerate every rank runs the recipe; only rank 0 writes run state and reports."""
    return int(os.environ.get("RANK", "0")) == 0


class Stages:
    def __init__(self, run_dir: Path):
        self.dir = run_dir / ".stages"

    def get(self, stage: str) -> dict | None:
        p = self.dir / f"{stage}.json"
        return read_json(p) if p.is_file() else None

    def put(self, stage: str, state: dict) -> None:
        if is_main_process():
            write_json(self.dir / f"{stage}.json", state)


def digest(paths: list[Path]) -> str:
    """Content hash of output files (directories: every file inside but checkpoints and logs)."""
    parts = []
    for p in paths:
        files = sorted(f for f in p.rglob("*") if f.is_file() and "checkpoints" not in f.parts
                       and f.suffix not in (".log", ".png")) if p.is_dir() else [p]
        parts += [(str(f.relative_to(p.parent)), sha256_file(f)) for f in files if f.exists()]
    return sha256_json(parts)


def run_recipe(recipe: Recipe, *, from_stage: str | None = None, only: str | None = None) -> dict:
    """Run (or resume) every enabled stage; returns the summary of each stage."""
    for name, value in (("--from", from_stage), ("--only", only)):
        if value is not None and value not in STAGES:
            raise CamelidError(f"{name} {value!r}: choose one of {', '.join(STAGES)}")
    run_dir = recipe.directory
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "recipe.json", recipe.model_dump())
    stages = Stages(run_dir)
    summaries: dict[str, Any] = {}
    upstream: dict[str, str] = {}  # stage -> digest of its outputs
    prepare(recipe, run_dir)
    for stage in STAGES:
        if not recipe.enabled(stage):
            continue
        runner, inputs = RUNNERS[stage](recipe, run_dir, upstream)
        key = sha256_json(inputs)
        state = stages.get(stage)
        forced = (only == stage) or (from_stage is not None and STAGES.index(stage) >= STAGES.index(from_stage))
        skip_by_flag = only is not None and only != stage or (
            from_stage is not None and STAGES.index(stage) < STAGES.index(from_stage))
        if skip_by_flag or (state and state["status"] == "done" and state["inputs"] == key and not forced):
            if not state or state["status"] != "done":
                raise CamelidError(f"stage {stage} has not finished yet; run it first (drop --from/--only)")
            console.print(f"[green]✓[/] {stage}: unchanged, skipped")
            summaries[stage] = state["summary"]
            upstream[stage] = state["outputs"]
            continue
        out_dir = run_dir / stage
        if state and (state["inputs"] != key or forced) and out_dir.exists() and is_main_process():
            console.print(f"[yellow]↻[/] {stage}: inputs changed or rerun asked, starting it over")
            shutil.rmtree(out_dir)
        elif state and state["status"] == "running":
            console.print(f"[yellow]↻[/] {stage}: resuming an interrupted run")
        console.rule(f"[bold]{stage}")
        stages.put(stage, {"status": "running", "inputs": key, "started": time.time()})
        t0 = time.perf_counter()
        summary, outputs = runner(out_dir)
        summary.setdefault("seconds", round(time.perf_counter() - t0, 1))  # a stage may count its resumes too
        upstream[stage] = digest(outputs)
        stages.put(stage, {"status": "done", "inputs": key, "outputs": upstream[stage], "summary": summary,
                           "finished": time.time()})
        summaries[stage] = summary
    if is_main_process():
        write_report(recipe, run_dir, summaries)
    return summaries


# ----------------------------------------------------------------------------------------------- preparation


def prepare(recipe: Recipe, run_dir: Path) -> None:
    """Split the seed tasks: held-out tasks for eval, the rest for generation (seeded; redone only when its inputs
    change, which the generate and eval stages then see in their input hashes)."""
    out = run_dir / "prepare"
    lang = recipe.settings("generate").get("lang") or recipe.lang
    seeds_path = Path(recipe.seeds) if recipe.seeds else default_seeds(lang)
    n = recipe.eval.heldout if recipe.eval and not recipe.eval.questions else 0
    split_seed = recipe.eval.heldout_seed if recipe.eval else 0
    split = {"seeds": data_sha256(seeds_path), "heldout": n, "heldout_seed": split_seed}
    if recipe.seeds and recipe.columns:
        split["columns"] = recipe.columns
    if (out / "split.json").is_file() and read_json(out / "split.json") == split:
        return
    with using_columns(recipe.columns if recipe.seeds else None, "columns"):  # the user's seeds, not the shipped
        tasks = [row for _, _, row in read_records(seeds_path)]
    if n >= len(tasks):
        raise CamelidError(f"eval.heldout {n} leaves no seed tasks for generation ({len(tasks)} in {seeds_path})")
    order = list(range(len(tasks)))
    random.Random(split_seed).shuffle(order)
    held = set(order[:n])
    write_jsonl(out / "heldout.jsonl", [t for i, t in enumerate(tasks) if i in held])
    write_jsonl(out / "seeds.jsonl", [t for i, t in enumerate(tasks) if i not in held])
    write_json(out / "split.json", split)  # last: a crash before it redoes the split


# ----------------------------------------------------------------------------------------------- stages

Runner = Callable[[Path], tuple[dict, list[Path]]]


def generate_stage(recipe: Recipe, run_dir: Path, upstream: dict) -> tuple[Runner, dict]:
    if recipe.distill is not None:
        return distill_stage(recipe, run_dir, upstream)

    seeds = run_dir / "prepare" / "seeds.jsonl"
    settings = {"seed": recipe.seed, "lang": recipe.lang, **recipe.settings("generate")}
    inputs = {"settings": settings, "seeds": sha256_file(seeds)}

    def run(out: Path) -> tuple[dict, list[Path]]:
        cfg = GenerateConfig(**{**settings, "seeds": str(seeds), "output": str(out / "data.jsonl")})
        r = generate(cfg)
        if r.kept == 0:
            why = f"generate kept no instruction ({r.stopped or 'see ' + str(out)})"
            if recipe.trains_on_generated_alone():
                raise CamelidError(f"{why}; nothing to train on")
            console.print(f"[yellow]{why}; training goes on with the stages' other data[/]")
        summary = {"kept": r.kept, "target": r.target, "candidates": r.kept + sum(r.rejected.values()),
                   "rejected": dict(r.rejected), "stopped": r.stopped,
                   # every invocation of this stage (resumes included), from the durable logs
                   "requests": r.totals.requests, "failed_requests": r.totals.failed,
                   "tokens": r.totals.prompt_tokens + r.totals.completion_tokens,
                   "seconds": round(max(r.total_seconds, r.seconds), 1)}
        return summary, [out / "data.jsonl"]

    return run, inputs


def distill_stage(recipe: Recipe, run_dir: Path, upstream: dict) -> tuple[Runner, dict]:
    """The generate stage of a context-distillation recipe: the teacher answers the (non-held-out) seed
    instructions under the hidden context; the answers are the training data."""
    seeds = run_dir / "prepare" / "seeds.jsonl"
    settings = {"seed": recipe.seed, "lang": recipe.lang, **(recipe.distill or {})}
    inputs = {"settings": settings, "seeds": sha256_file(seeds), "mode": "distill"}

    def run(out: Path) -> tuple[dict, list[Path]]:
        cfg = DistillConfig(**{**settings, "seeds": str(seeds), "output": str(out / "data.jsonl")})
        r = distill(cfg)
        if r.kept == 0:
            raise CamelidError(f"distill kept no answer (rejected: {dict(r.rejected)}); see {out}")
        summary = {"mode": "distill", "kept": r.kept, "target": r.candidates, "candidates": r.candidates,
                   "rejected": dict(r.rejected), "requests": r.requests, "failed_requests": r.failed_requests,
                   "tokens": r.prompt_tokens + r.completion_tokens, "stopped": None, "errors": r.errors}
        if cfg.check is not None:
            summary["teacher_check"] = {"check": cfg.check.describe(), "k": r.teacher_passes, "n": r.candidates}
        return summary, [out / "data.jsonl"]

    return run, inputs


def _train_summary(res: dict, stats: DataStats, method: str, template: str) -> dict:
    summary = {k: res[k] for k in ("steps", "final_loss", "eval_loss", "tokens_seen", "trainable_params")}
    summary.update(train_time_s=round(res["train_time_s"], 1), peak_memory_mb=round(res["peak_memory_mb"]),
                   records=stats.records, kept=stats.kept, problems=stats.problems(), method=method,
                   template=template)
    return summary


def staged_train_stage(recipe: Recipe, run_dir: Path, upstream: dict) -> tuple[Runner, dict]:
    """A staged train section: train/multistage.py's tokenizer step and stages, each in RUN_DIR/train/NAME (a
    finished stage is skipped, an interrupted one resumes from its checkpoints)."""
    staged = recipe.staged()
    assert staged is not None
    own = set(recipe.train_data())
    files = sorted({f for s in staged.stages for f in s.config.data if f not in own}
                   | set(staged.tokenizer.corpus if staged.tokenizer else []))
    inputs = {"settings": {"seed": recipe.seed, **recipe.settings("train")},
              "files": {f: sha256_file(Path(f)) for f in files if Path(f).is_file()},
              "data": recipe.data and [data_sha256(d) for d in recipe.data] or upstream.get("generate")}

    def run(out: Path) -> tuple[dict, list[Path]]:
        gen = recipe.generated_file
        empty = gen is not None and not (gen.is_file() and gen.stat().st_size)  # generation kept nothing
        for stage in staged.stages:
            if empty:
                stage.config.data = [f for f in stage.config.data if Path(f).resolve() != gen.resolve()]
            if "seed" not in stage.config.model_fields_set:  # the recipe's seed, as for a one-run train section
                stage.config.seed = recipe.seed
            if stage.config.save_steps is None:  # an interrupted quick run should still resume
                stage.config.save_steps = 10
        results = run_stages(staged, console)
        rows = []
        for stage, r in zip(staged.stages, results):
            if r is None:  # finished in an earlier, interrupted run of this stage
                meta = RunInfo.read(Path(stage.config.output_dir))
                assert meta is not None
                res, stats = meta.to_dict(), DataStats(**(meta.data_stats or {}))
            else:
                res, stats = vars(r), r.stats
            rows.append({"name": stage.name, **_train_summary(res, stats, stage.config.method,
                                                                stage.config.template)})
        summary = dict(rows[-1])  # the last stage made the model; time, tokens and memory cover every stage
        summary.update(train_time_s=round(sum(r["train_time_s"] for r in rows), 1),
                       tokens_seen=sum(r["tokens_seen"] or 0 for r in rows),
                       peak_memory_mb=max(r["peak_memory_mb"] for r in rows), stages=rows)
        if staged.tokenizer is not None:
            ext = read_json(Path(staged.tokenizer.output) / EXTENSION_FILE)
            summary["tokenizer"] = {"base_vocab_size": ext["base_vocab_size"], "vocab_size": ext["vocab_size"],
                                    "added": ext["vocab_size"] - ext["base_vocab_size"]}
        return summary, [out]

    return run, inputs


def train_stage(recipe: Recipe, run_dir: Path, upstream: dict) -> tuple[Runner, dict]:
    if recipe.staged() is not None:
        return staged_train_stage(recipe, run_dir, upstream)
    data = recipe.train_data()
    settings = {"seed": recipe.seed, **recipe.settings("train")}
    if recipe.data and recipe.columns and "columns" not in settings:  # the recipe's mapping, for its own data
        settings["columns"] = recipe.columns
    inputs = {"settings": settings, "data": recipe.data and [data_sha256(d) for d in data]
              or upstream.get("generate")}

    def run(out: Path) -> tuple[dict, list[Path]]:
        cfg = load_config(None, [], **{**settings, "data": data, "output_dir": str(out)})
        if cfg.save_steps is None:  # an interrupted quick run should still resume
            cfg.save_steps = 10
        meta = RunInfo.read(out)
        if meta and cfg.model_dump(mode="json") != meta.config:
            console.print("[yellow]↻[/] train: the finished run there has other settings, starting it over")
            shutil.rmtree(out)
            meta = None
        if meta:
            # training finished but the run died before recording it: adopt the result instead of refusing
            console.print("[green]✓[/] train: the run had finished before the crash, adopting it")
            res, stats = meta.to_dict(), DataStats(**(meta.data_stats or {}))
        else:
            r = train(cfg, console=console)  # camelid.json is the main process's alone: use the result
            res, stats = vars(r), r.stats
        return _train_summary(res, stats, cfg.method, cfg.template), [out]

    return run, inputs


def eval_stage(recipe: Recipe, run_dir: Path, upstream: dict) -> tuple[Runner, dict]:
    ev = recipe.eval
    assert ev is not None
    questions = Path(ev.questions) if ev.questions else run_dir / "prepare" / "heldout.jsonl"
    inputs = {"settings": ev.model_dump(), "questions": data_sha256(questions), "model": upstream.get("train"),
              "base": recipe.base_model, "seed": recipe.seed}

    def run(out: Path) -> tuple[dict, list[Path]]:
        summary = before_after(recipe, questions, recipe.model_dir, out,
                               base=recipe.base_model if recipe.staged() else None)
        summary["questions_sha256"] = inputs["questions"]  # runs are comparable only on the same questions
        return summary, [out / "metrics.json"]

    return run, inputs


def serve_stage(recipe: Recipe, run_dir: Path, upstream: dict) -> tuple[Runner, dict]:
    def run(out: Path) -> tuple[dict, list[Path]]:
        model = load_model(f"hf:{recipe.model_dir}")
        console.print(f"serving {recipe.model_dir} on http://{recipe.serve.host}:{recipe.serve.port} (Ctrl-C ends)")
        serve(create_app(model), recipe.serve.host, recipe.serve.port)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "served.json", {"host": recipe.serve.host, "port": recipe.serve.port})
        return {"served": True}, [out / "served.json"]

    return run, {"always": time.time()}  # serving is never "unchanged"


RUNNERS = {"generate": generate_stage, "train": train_stage, "eval": eval_stage, "serve": serve_stage}
