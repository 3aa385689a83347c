"""Multi-stage training in one command: `camelid train kollama2_two_stage` (a YAML with a `stages:` list).

Chinese-LLaMA / KoLlama2 teach an English model a new language in steps: extend the tokenizer, train the new
embedding rows on raw text, then instruction-tune. A staged config holds an optional `tokenizer:` section
(`camelid tokenizer extend` settings; skipped when its output already holds an extended tokenizer) and `stages:`,
each an ordinary `camelid train` config plus a `name`, run in order. A stage whose output_dir holds camelid.json is
finished and skipped, so rerunning the command after a crash continues where it stopped (and an interrupted stage
resumes from its checkpoints as any run does).

Paths: inputs (data, eval_data, tokenizer.corpus, a stage's model or tokenizer) that do not exist from the working
directory are taken relative to the YAML's directory (so the shipped config finds the shipped data); outputs
(output_dir, tokenizer.output, and a model or tokenizer naming one of them) are relative to the working directory,
like every `camelid train` run, so a shipped config never writes into the package.

Overrides: `STAGE.key=value` sets one stage (`embeddings.max_steps=2`), `tokenizer.key=value` the tokenizer section
(`tokenizer=null` or `tokenizer.add=0` drops it: the same stages on the base vocabulary), a plain `key=value` every
stage.

`camelid run` takes the same shape as a recipe's `train:` section (`StagedTrain`); there the run places the outputs
(RUN_DIR/train/tokenizer, RUN_DIR/train/NAME) and hands a stage without data the run's data (see `staged_run`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field

from camelid.core.config import apply_overrides, validate
from camelid.core.io import CamelidError
from camelid.core.tables import hub_id
from camelid.models.spec import local_path
from camelid.train.config import TrainConfig, read_config_file, validate_config
from camelid.train.sft import train
from camelid.train.vocab import EXTENSION_FILE, charset, extend_tokenizer


class TokenizerSection(BaseModel):
    """`camelid tokenizer extend` settings, run before the first stage unless `output` already holds the result."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field("embedded", description="model spec whose tokenizer is extended: embedded | hf:PATH")
    corpus: list[str] = Field(..., min_length=1, description="text files or datasets the new pieces are learned on")
    add: int = Field(..., ge=0, description="most new tokens; 0 = no vocabulary extension (the section is skipped: "
                     "a sweep's without-extension cell)")
    charsets: list[Literal["hangul", "hanzi"]] = Field(default_factory=list, description="also make every common "
                                                       "character of these scripts one token")
    min_frequency: int = Field(2, ge=1)
    output: str = Field(..., description="directory of the extended tokenizer")


GENERATED = "generated"  # in a recipe stage's data list: the run's data (RUN_DIR/generate/data.jsonl)


class StagedTrain(BaseModel):
    """A recipe's staged `train:` section: a staged config's `tokenizer:` and `stages:` (validated by `staged_run`
    once the run has placed the outputs)."""

    model_config = ConfigDict(extra="forbid")

    tokenizer: Optional[dict] = Field(None, description="`camelid tokenizer extend` settings (output: set by the run)")
    stages: list[dict] = Field(..., min_length=1, description="`camelid train` settings plus a name, run in order")


@dataclass
class Stage:
    name: str
    config: TrainConfig


@dataclass
class StagedRun:
    path: Path
    tokenizer: Optional[TokenizerSection]
    stages: list[Stage]

    def to_dict(self) -> dict:
        return {"tokenizer": self.tokenizer.model_dump() if self.tokenizer else None,
                "stages": [{"name": s.name, **s.config.model_dump()} for s in self.stages]}


def _same(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _input(base: Path, value: str, outputs: list[str]) -> str:
    """An input path: as given when absolute, found from the working directory or naming an output of this
    file; else relative to the YAML's directory. A model spec keeps its `hf:` prefix; `embedded` stays."""
    if value == "embedded" or hub_id(value) is not None:  # a Hub dataset id is not a path
        return value
    path = local_path(value)
    prefix = value[: len(value) - len(path)]
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or any(_same(path, o) for o in outputs):
        return value
    return prefix + os.path.normpath(base / p)


def _route(overrides: list[str], names: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(tokenizer-section overrides, overrides per stage name). A plain `tokenizer=null` drops the section (a run
    without vocabulary extension, e.g. a sweep's other cell); `tokenizer.key=value` sets one of its settings."""
    tok: list[str] = []
    per: dict[str, list[str]] = {n: [] for n in names}
    for item in overrides:
        key, sep, value = item.partition("=")
        head, dot, rest = key.strip().partition(".")
        if head == "tokenizer":
            tok.append(f"{rest}{sep}{value}" if dot else f"={value}")
        elif dot and head in per:
            per[head].append(f"{rest}{sep}{value}")
        else:
            for n in names:
                per[n].append(item)
    return tok, per


def stage_names(stages_raw: list[dict]) -> list[str]:
    return [str(s.get("name") or f"stage{i + 1}") for i, s in enumerate(stages_raw)]


def apply_stage_overrides(raw: dict, overrides: list[str], where: str | Path) -> dict:
    """The staged settings (`tokenizer`, `stages`) with overrides applied, still unvalidated."""
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw or not all(isinstance(s, dict) for s in stages_raw):
        raise CamelidError(f"{where}: stages must be a list of `camelid train` settings (one mapping per stage)")
    names = stage_names(stages_raw)
    clash = next((n for n in names if n in TrainConfig.model_fields or n == "tokenizer" or names.count(n) > 1), None)
    if clash:
        raise CamelidError(f"{where}: stage name {clash!r} is repeated or is a setting name; name each stage uniquely")
    if not isinstance(raw.get("tokenizer") or {}, dict):
        raise CamelidError(f"{where}: tokenizer must be a mapping of `camelid tokenizer extend` settings (base, "
                           "corpus, add, output); a stage's tokenizer: DIR goes inside the stage")
    tok_over, per_stage = _route(list(overrides or []), names)
    tokenizer = raw.get("tokenizer")
    for item in tok_over:
        if item.startswith("="):  # tokenizer=VALUE: null drops the section, a mapping replaces it
            tokenizer = apply_overrides({"t": tokenizer}, [f"t{item}"])["t"]
        else:
            tokenizer = apply_overrides(tokenizer or {}, [item])
    stages = [{**apply_overrides({k: v for k, v in s.items() if k != "name"}, per_stage[n]), "name": n}
              for s, n in zip(stages_raw, names)]
    return {**raw, "tokenizer": tokenizer, "stages": stages}


def load_stages(path: str | Path, overrides: list[str] | None = None) -> StagedRun:
    """Read and validate a staged config (every stage, before anything runs)."""
    p, raw = read_config_file(path)
    extra = sorted(set(raw) - {"tokenizer", "stages"})
    if extra:
        raise CamelidError(f"{p}: a staged config holds tokenizer and stages only; move {', '.join(extra)} into "
                           "the stages")
    return staged_run(apply_stage_overrides(raw, list(overrides or []), p), p, p.resolve().parent)


def staged_run(raw: dict, where: str | Path, base: Path, run_dir: Path | None = None,
               data: list[str] | None = None) -> StagedRun:
    """Validate staged settings (overrides already applied). Inputs not found resolve against `base`.

    Inside a recipe (`run_dir` given) the run places the outputs: the tokenizer in RUN_DIR/tokenizer, each stage in
    RUN_DIR/NAME; a stage without `data` trains on the run's `data` (and `generated` in a stage's list stands for
    it, beside other files); a later stage without `model` (or naming an
    earlier stage) starts from that stage's output, and the first stage trains with the extended tokenizer."""
    stages_raw = [dict(s) for s in raw["stages"]]
    names = stage_names(stages_raw)
    section = raw.get("tokenizer")
    if isinstance(section, dict) and section.get("add") == 0:
        section = None  # add: 0 = train on the base vocabulary
    if run_dir is not None:
        for key, s in [("tokenizer.output", section or {})] + [(f"{n}.output_dir", s) for n, s in
                                                                zip(names, stages_raw)]:
            if key.rsplit(".", 1)[1] in s:
                raise CamelidError(f"{where}: train.{key} is set by the run (RUN_DIR/train/...); remove it")
        if section is not None:
            section = {**section, "output": str(run_dir / "tokenizer")}
        outs = {n: str(run_dir / n) for n in names}
        for i, (n, s) in enumerate(zip(names, stages_raw)):
            s["output_dir"] = outs[n]
            if not s.get("data"):
                s["data"] = list(data or [])
            elif GENERATED in (listed := s["data"] if isinstance(s["data"], list) else [s["data"]]):
                s["data"] = [f for d in listed for f in ((data or []) if d == GENERATED else [d])]  # beside others
            if i and (s.get("model") is None or s.get("model") in names[:i]):
                s["model"] = outs[s.get("model") or names[i - 1]]
            if i == 0 and section is not None and s.get("tokenizer") is None:
                s["tokenizer"] = section["output"]
    tokenizer = None
    if section is not None:
        tokenizer = validate(TokenizerSection, section, where, prefix="tokenizer.")
    settings = [{k: v for k, v in s.items() if k != "name"} for s in stages_raw]
    outputs = [str(s["output_dir"]) for s in settings if s.get("output_dir")]
    outputs += list(data or [])  # the run's data (e.g. RUN_DIR/generate/data.jsonl) may not exist yet
    if tokenizer is not None:
        outputs.append(tokenizer.output)
        tokenizer.corpus = [_input(base, c, []) for c in tokenizer.corpus]
        tokenizer.base = _input(base, tokenizer.base, outputs)
    stages = []
    for name, s in zip(names, settings):
        for key in ("data", "eval_data"):
            if isinstance(s.get(key), str):
                s[key] = [s[key]]
            if isinstance(s.get(key), list):
                s[key] = [_input(base, str(f), outputs) for f in s[key]]
        for key in ("model", "tokenizer"):
            if isinstance(s.get(key), str):
                s[key] = _input(base, s[key], outputs)
        stages.append(Stage(name, validate_config(s, where=f"{where}: stage {name}")))
    dirs = [Path(s.config.output_dir).expanduser().resolve() for s in stages]
    if len(set(dirs)) < len(dirs):
        raise CamelidError(f"{where}: two stages write the same output_dir; give each its own")
    return StagedRun(Path(where), tokenizer, stages)


def ensure_tokenizer(section: TokenizerSection, console=None) -> Path:
    """Build the extended tokenizer unless `output` already holds one (its vocab_extension.json is written last).
    Deterministic, with atomic writes, so processes of a multi-process launch may all build it."""
    out = Path(section.output).expanduser().resolve()
    if (out / EXTENSION_FILE).is_file():
        _say(console, f"tokenizer: {out} already holds an extended tokenizer; kept (delete it to rebuild)")
        return out
    _say(console, f"tokenizer: extending {section.base} with up to {section.add} tokens -> {out}")
    coverage = "".join(charset(c) for c in section.charsets)
    tok = extend_tokenizer(section.base, section.corpus, section.add, out, section.min_frequency, coverage)
    _say(console, f"tokenizer: {len(tok):,} tokens")
    return out


def run_stages(run: StagedRun, console=None) -> list:
    """Run the tokenizer section and every unfinished stage in order; returns each stage's TrainResult (None for
    a stage that was already finished)."""
    if run.tokenizer is not None:
        ensure_tokenizer(run.tokenizer, console)
    results = []
    for i, stage in enumerate(run.stages, 1):
        out = Path(stage.config.output_dir).expanduser().resolve()
        head = f"stage {i}/{len(run.stages)} {stage.name}"
        if (out / "camelid.json").is_file() and not stage.config.overwrite:
            _say(console, f"{head}: finished earlier ({out / 'camelid.json'}); skipped")
            results.append(None)
            continue
        _say(console, f"{head}: training {stage.config.method} -> {out}")
        results.append(train(stage.config, console=console))
    return results


def show(run: StagedRun) -> str:
    return yaml.safe_dump(run.to_dict(), sort_keys=False, allow_unicode=True)


def _say(console, msg: str) -> None:
    if console is not None and os.environ.get("RANK", "0") == "0":
        console.print(msg, highlight=False)
