"""Context distillation (Askell et al. 2021; Llama 2's Ghost Attention): the teacher answers instructions under a
context the student will not see (a system prompt, few-shot turns), and the student is trained on the bare
(instruction, answer) pairs, so it learns to behave as if the context were there.

Each answer is one appended line of OUT.jsonl (an Alpaca row) or of OUT.rejected.jsonl with its `reason`
(`check_failed` when a `check` is given and the answer does not pass it, or an output-quality reason), so a rerun
skips what is done. Answer k of instruction i is sampled with a seed derived from (seed, i, k): the same settings
give the same data.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from camelid.core.cli import console
from camelid.core.io import CamelidError, JsonlAppender, read_jsonl, repair_jsonl_tail
from camelid.data.checks import Check
from camelid.generate.prompts import default_seeds, load_seeds
from camelid.generate.quality import OutputFilter, QualityConfig
from camelid.models import load_model
from camelid.models.base import Model, ModelError, Sampling


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str
    assistant: str


class DistillConfig(BaseModel):
    """The teacher, the hidden context, the instructions and what makes an answer a good example."""

    model_config = ConfigDict(extra="forbid")

    output: Path = Field(description="kept rows (Alpaca JSONL); OUT.rejected.jsonl beside it")
    model: str = Field("embedded", description="the teacher: embedded | gguf:PATH | hf:PATH | openai:NAME")
    base_url: Optional[list[str]] = None
    api_key: Optional[str] = None
    system: Optional[str] = Field(None, description="the system prompt the teacher sees and the student does not")
    examples: list[Turn] = Field(default_factory=list, description="few-shot turns shown to the teacher before "
                                 "each instruction (hidden from the student too)")
    seeds: Optional[Path] = Field(None, description="instructions to answer (self-instruct seeds or Alpaca rows); "
                                  "a recipe passes its seed tasks minus the held-out ones")
    lang: str = "en"
    limit: Optional[int] = Field(None, ge=1, description="answer only the first N instructions (a quick try)")
    samples: int = Field(1, ge=1, description="answers per instruction (each with its own seed)")
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(128, ge=1)
    seed: int = 0
    concurrency: Optional[int] = Field(None, ge=1)
    check: Optional[Check] = Field(None, description="an answer must pass it to be kept (and the teacher's pass "
                                   "rate is reported)")
    keep_failing: bool = Field(False, description="keep answers that fail the check (plain context distillation)")
    keep_truncated: bool = Field(False, description="keep answers cut by max_tokens (the student would learn not "
                                 "to stop)")
    quality: QualityConfig = Field(default_factory=QualityConfig)


@dataclass
class DistillReport:
    output: Path
    kept: int = 0
    candidates: int = 0
    rejected: Counter = field(default_factory=Counter)
    teacher_passes: int = 0  # answers passing the check (kept or not)
    requests: int = 0
    failed_requests: int = 0
    errors: list[str] = field(default_factory=list)  # the first few failures, said in the summary
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


def teacher_messages(cfg: DistillConfig, user: str) -> list[dict]:
    msgs: list[dict] = [{"role": "system", "content": cfg.system}] if cfg.system else []
    for t in cfg.examples:
        msgs += [{"role": "user", "content": t.user}, {"role": "assistant", "content": t.assistant}]
    return msgs + [{"role": "user", "content": user}]


def _user(instruction: str, inp: str) -> str:
    return instruction + ("\n\n" + inp if inp else "")


def distill(cfg: DistillConfig, model: Model | None = None, show_progress: bool = True) -> DistillReport:
    """Answer every (instruction, sample) not yet in the output files; return the counts of the whole output."""


    out = Path(cfg.output)
    rejected_path = out.with_suffix(".rejected.jsonl")
    tasks = load_seeds(cfg.seeds or default_seeds(cfg.lang))[: cfg.limit]
    todo_all = [(i, k) for i in range(len(tasks)) for k in range(cfg.samples)]
    rep = DistillReport(out)
    done: set[str] = set()
    for path in (out, rejected_path):
        repair_jsonl_tail(path)
        if path.exists():
            for _, row in read_jsonl(path):
                done.add(row.get("key", ""))
                if path == out:
                    rep.kept += 1
                else:
                    rep.rejected[row.get("reason", "unknown")] += 1
                rep.teacher_passes += bool(row.get("check_passed"))
    todo = [(i, k) for i, k in todo_all if f"{i}:{k}" not in done]
    quality = OutputFilter(cfg.quality, cfg.lang)
    t0 = time.perf_counter()
    own = model is None and bool(todo)
    if own:
        model = load_model(cfg.model, base_urls=cfg.base_url, api_key=cfg.api_key, concurrency=cfg.concurrency or 8)

    def answer(item: tuple[int, int]):
        i, k = item
        t = tasks[i]
        seed = zlib.crc32(f"{cfg.seed}:{i}:{k}".encode()) & 0x7FFFFFFF
        sampling = Sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=seed)
        return model.chat(teacher_messages(cfg, _user(t.instruction, t.input)), sampling)

    bar = Progress(TextColumn("[bold]answered"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[info]}"), console=console, disable=not show_progress)
    task = bar.add_task("answered", total=len(todo_all), completed=len(todo_all) - len(todo), info="")
    try:
        with bar, JsonlAppender(out) as kept, JsonlAppender(rejected_path) as rejected:
            for n, res in (model.map(answer, todo, cfg.concurrency) if todo else ()):
                bar.update(task, advance=1, info=f"kept {rep.kept} · rejected {sum(rep.rejected.values())}")
                i, k = todo[n]
                rep.requests += 1
                if isinstance(res, BaseException):
                    if not isinstance(res, ModelError):
                        raise res
                    rep.failed_requests += 1
                    if len(rep.errors) < 3:
                        rep.errors.append(f"instruction {i}: {res}")
                    continue
                rep.prompt_tokens += res.prompt_tokens
                rep.completion_tokens += res.completion_tokens
                t = tasks[i]
                text = res.text.strip()
                passed = cfg.check.passes(text) if cfg.check else None
                row: dict[str, Any] = {"instruction": t.instruction, "input": t.input, "output": text,
                                       "key": f"{i}:{k}", "check_passed": passed}
                reason = None
                if not text:
                    reason = "empty_output"
                elif res.finish_reason == "length" and not cfg.keep_truncated:
                    reason = "truncated"
                elif cfg.check and not passed and not cfg.keep_failing:
                    reason = "check_failed"
                else:
                    reason = quality.reason(t.instruction, t.input, text)
                rep.teacher_passes += bool(passed)
                if reason:
                    rejected.write({**row, "reason": reason})
                    rep.rejected[reason] += 1
                else:
                    kept.write(row)
                    rep.kept += 1
    finally:
        if own and model is not None:
            model.close()
    if todo and rep.failed_requests == len(todo):
        raise CamelidError(f"every one of {len(todo)} teacher requests failed ({cfg.model}): {rep.errors[0]}")
    rep.candidates = rep.kept + sum(rep.rejected.values())
    rep.seconds = time.perf_counter() - t0
    return rep
