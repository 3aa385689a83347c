"""Seed tasks and prompt files: what ships with camelid, and what a user passes instead."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from camelid.core.io import CamelidError, DataError, Problem, read_records
from camelid.core.records import check_input, json_type, read_text

HERE = Path(__file__).resolve().parent
PROMPTS_DIR = HERE / "prompts"
SEEDS_DIR = HERE / "seeds"
LANGS = ("en", "ko", "zh")
LANGUAGE_NAMES = {"en": "English", "ko": "Korean", "zh": "Simplified Chinese"}


@dataclass
class SeedTask:
    """A human-written task: Stanford uses the instruction with its first instance; Wang et al. all of them."""

    instruction: str
    instances: list[dict] = field(default_factory=list)  # [{"input", "output"}]
    is_classification: bool = False

    @property
    def input(self) -> str:
        return self.instances[0]["input"] if self.instances else ""

    @property
    def output(self) -> str:
        return self.instances[0]["output"] if self.instances else ""


def default_seeds(lang: str) -> Path:
    if lang not in LANGS:
        raise CamelidError(f"unknown language {lang!r}: use one of {', '.join(LANGS)}")
    return SEEDS_DIR / f"seed_tasks_{lang}.jsonl"


def load_seeds(path: str | Path) -> list[SeedTask]:
    """Seed tasks from self-instruct's format ({instruction, instances: [{input, output}], is_classification})
    or from Alpaca rows ({instruction, input, output}); problems name file, line and field."""
    path = Path(path)
    tasks, problems = [], []
    for line, idx, rec in read_records(path):
        def bad(fld: str | None, msg: str) -> None:
            problems.append(Problem(str(path), line, fld, msg, record=idx))

        if not isinstance(rec, dict):
            bad(None, f"expected an object, got {json_type(rec)}")
            continue
        inst = rec.get("instruction")
        if not isinstance(inst, str) or not inst.strip():
            bad("instruction", "missing" if "instruction" not in rec else f"expected a string, got {json_type(inst)}"
                if not isinstance(inst, str) else "empty" if not inst else "blank")
            continue
        if "instances" in rec:
            instances = rec["instances"]
            if not isinstance(instances, list) or not instances:
                bad("instances", "expected a non-empty list of {input, output}")
                continue
            ok = all(isinstance(x, dict) and isinstance(x.get("input", ""), str) and isinstance(x.get("output"), str)
                     for x in instances)
            if not ok:
                bad("instances", "every instance needs string 'input' and 'output'")
                continue
            instances = [{"input": x.get("input", ""), "output": x["output"]} for x in instances]
        elif isinstance(rec.get("output"), str) and isinstance(rec.get("input", ""), str):
            instances = [{"input": rec.get("input", ""), "output": rec["output"]}]
        else:
            bad("output", "expected 'instances' (seed task) or string 'input'/'output' (alpaca row)")
            continue
        tasks.append(SeedTask(inst, instances, bool(rec.get("is_classification", False))))
        if len(problems) >= 20:
            break
    if problems:
        raise DataError(problems)
    if not tasks:
        raise DataError(Problem(str(path), None, None, "no seed tasks"))
    return tasks


def prompt_file(name: str) -> str:
    """A shipped prompt file (generate/prompts/NAME.txt)."""
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.is_file():
        raise CamelidError(f"{path}: no such prompt file")
    return path.read_text(encoding="utf-8")


def read_prompt(path: str | Path) -> str:
    check_input(path)
    text = read_text(path)
    if not text.strip():
        raise CamelidError(f"{path}: the prompt file is empty")
    return text
