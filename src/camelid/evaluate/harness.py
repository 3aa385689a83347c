"""`camelid eval bench`: Open LLM Leaderboard-style benchmarks through EleutherAI's lm-evaluation-harness.

The model camelid loaded (transformers weights, PEFT adapters merged) is handed to lm_eval's HFLM as an object, so
log-likelihood (multiple choice) and generation tasks score exactly the weights camelid trains and serves. Tasks are
lm_eval task names or task YAML files; a YAML's relative `data_files` are resolved against the YAML's folder, so a
task over a local JSONL runs from any working directory, offline.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from camelid.core.io import CamelidError, write_text
from camelid.models import parse_spec
from camelid.models.hf import HFModel


def _yaml_task(path: Path) -> dict[str, Any]:
    """A task YAML as lm_eval reads it (`include:` and `!function` resolved), local data paths made absolute."""
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        cfg = load_yaml(path)
    except Exception as e:  # yaml errors, missing includes
        raise CamelidError(f"{path}: cannot read the task YAML: {e}") from None
    if "task" not in cfg or not isinstance(cfg["task"], str):
        raise CamelidError(f"{path}: field 'task' is missing (camelid runs single-task YAMLs; pass groups by name)")
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")

    def fix(p: Any) -> Any:
        if isinstance(p, str) and "://" not in p and not os.path.isabs(p):
            full = (path.parent / p).resolve()
            if not full.exists():
                raise CamelidError(f"{path}: field 'dataset_kwargs.data_files': {p} not found next to the YAML")
            return str(full)
        return [fix(x) for x in p] if isinstance(p, list) else p

    if isinstance(files, dict):
        cfg["dataset_kwargs"]["data_files"] = {k: fix(v) for k, v in files.items()}
    elif files is not None:
        cfg["dataset_kwargs"]["data_files"] = fix(files)
    return cfg


def _lm(spec: str, batch_size: int | str, device: str | None):
    """lm_eval's HFLM around the transformers model camelid loads for `spec` (embedded or hf:PATH)."""
    from lm_eval.models.huggingface import HFLM

    s = parse_spec(spec)
    if s.kind not in ("embedded", "hf"):
        raise CamelidError(f"eval bench scores log-likelihoods with transformers weights: use --model embedded or "
                           f"hf:PATH (got {spec}); a GGUF or remote server does not expose them reliably")
    m = HFModel("embedded" if s.kind == "embedded" else s.target, device=device)
    model = m.model
    if hasattr(model, "merge_and_unload"):  # a PEFT adapter: score the merged weights
        model = model.merge_and_unload()
    return HFLM(pretrained=model, tokenizer=m.tokenizer, batch_size=batch_size, device=str(model.device)), m.name


def run_bench(model: str, tasks: list[str], *, limit: int | float | None = None, num_fewshot: int | None = None,
              batch_size: int | str = 8, device: str | None = None, seed: int = 0, log_samples: bool = False,
              bootstrap_iters: int = 1000) -> dict[str, Any]:
    """Run lm_eval tasks (names or YAML paths) on a camelid model; returns lm_eval's result dict (plus `model`)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise CamelidError("no tasks given (--tasks NAME or --tasks path/to/task.yaml)")
    specs: list[Any] = []
    for t in tasks:
        p = Path(t)
        if p.suffix in (".yaml", ".yml"):
            if not p.is_file():
                raise CamelidError(f"{p}: no such task YAML")
            specs.append(_yaml_task(p))
        else:
            specs.append(t)
    names = [s for s in specs if isinstance(s, str)]
    # indexing lm_eval's ~10k built-in task YAMLs takes seconds: skip it when every task is a local YAML
    tm = TaskManager(include_defaults=bool(names))
    unknown = [n for n in names if n not in tm.all_tasks]
    if unknown:
        raise CamelidError(f"unknown lm_eval task(s): {', '.join(unknown)} (see `lm_eval ls tasks`, or pass a YAML)")
    lm, name = _lm(model, batch_size, device)
    try:
        res = simple_evaluate(model=lm, tasks=specs, task_manager=tm, limit=limit, num_fewshot=num_fewshot,
                              bootstrap_iters=bootstrap_iters, log_samples=log_samples, random_seed=seed,
                              numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    except FileNotFoundError as e:
        raise CamelidError(f"task data not found (is it local? nothing is downloaded): {e}") from None
    if res is None:
        raise CamelidError("lm_eval returned no results")
    res["model"] = {"spec": model, "name": name}
    return res


def metrics_table(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten lm_eval's `results` into rows {task, metric, filter, value, stderr, n}."""
    rows = []
    for task, vals in res.get("results", {}).items():
        n = res.get("n-samples", {}).get(task, {}).get("effective")
        for key, v in vals.items():
            if "," not in key or key.split(",")[0].endswith("_stderr") or not isinstance(v, (int, float)):
                continue
            metric, flt = key.split(",", 1)
            err = vals.get(f"{metric}_stderr,{flt}")
            rows.append({"task": task, "metric": metric, "filter": flt, "value": float(v),
                         "stderr": float(err) if isinstance(err, (int, float)) and math.isfinite(err) else None,
                         "n": n})
    return rows


def save_results(res: dict[str, Any], path: str | Path) -> None:
    keep = {k: res[k] for k in ("model", "results", "n-samples", "configs", "versions", "n-shot", "samples",
                                "lm_eval_version", "date") if k in res}
    write_text(path, json.dumps(keep, ensure_ascii=False, indent=2, default=str) + "\n")
