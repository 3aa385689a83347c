"""A recipe: the whole run (generate -> train -> eval -> serve) in one YAML file.

Each stage's section is the config of the command it drives: `generate:` holds `camelid generate` settings,
`train:` is a `camelid train` config (the same pydantic models, so one schema and one error format), `eval:` the before/after evaluation. Scaling
up is changing a few lines: `generate.model: openai:NAME` with `base_url`, `train.model: hf:PATH`, and launching
with `accelerate launch` / `torchrun` on GPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from camelid.core.config import apply_overrides, validate
from camelid.core.io import CamelidError, read_yaml_mapping
from camelid.core.tables import hub_id
from camelid.data.checks import Check
from camelid.generate.distill import DistillConfig
from camelid.generate.generator import GenerateConfig
from camelid.train.config import TrainConfig
from camelid.train.multistage import StagedRun, StagedTrain, apply_stage_overrides, staged_run

STAGES = ("generate", "train", "eval", "serve")


class EvalSection(BaseModel):
    """Before/after evaluation of the student on instructions it never trained on."""

    model_config = ConfigDict(extra="forbid")

    heldout: int = Field(16, ge=1, description="seed tasks held out from generation and training, answered by the "
                         "student before and after (their reference outputs give the response-token loss)")
    heldout_seed: int = Field(0, description="seed of the held-out split, apart from the run's seed: runs that differ "
                              "only by seed (a sweep's error bars) are evaluated on the same questions")
    questions: Optional[str] = Field(None, description="an eval file instead of held-out seeds (any eval shape)")
    judge: str = Field("embedded", description="pairwise judge: embedded | gguf:PATH | openai:NAME | none (no judge: "
                       "loss, ROUGE-L, self-stops and the check carry the signal)")
    judge_base_url: list[str] = Field(default_factory=list, description="servers for an openai: judge")
    max_tokens: int = Field(128, ge=1, description="answer budget: an answer that needs all of it did not stop "
                            "by itself")
    temperature: float = Field(0.0, ge=0, description="0 = greedy, comparable before/after")
    judge_max_tokens: int = Field(256, ge=16)
    single: bool = Field(False, description="also grade each after-training answer 1-10 (one more judge call per "
                         "question)")
    lang: Literal["auto", "en", "ko", "zh"] = "auto"
    prompts: Literal["camelid", "mt-bench"] = Field("camelid", description="judge prompt set: camelid's own "
                                                    "(English, Korean, Chinese) or FastChat's MT-bench prompts byte "
                                                    "for byte")
    check: Optional[Check] = Field(None, description="a programmatic check of each answer (contains, starts_with, "
                                   "ends_with, regex, bullets, lang), its pass rate measured before and after; "
                                   "default: the distill section's")


class ServeSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="serve the trained model at the end (blocks until Ctrl-C)")
    host: str = "127.0.0.1"
    port: int = 8000


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("run", description="used for the default run directory runs/NAME")
    run_dir: Optional[str] = Field(None, description="where every stage writes (default runs/NAME)")
    seed: int = 0
    lang: Literal["en", "ko", "zh"] = Field("en", description="language of the shipped seeds used for held-out "
                                           "eval (and generation, unless generate.lang says otherwise)")
    seeds: Optional[str] = Field(None, description="seed tasks file (self-instruct format); default: the shipped "
                                 "seeds for generate.lang")
    data: list[str] = Field(default_factory=list, description="existing training files; with them the generate "
                            "stage is skipped (e.g. ShareGPT conversations for a Vicuna recipe)")
    columns: Optional[dict[str, str]] = Field(None, description="column mapping for the recipe's own data and seeds "
                                              "whose names differ, {instruction: prompt, output: completion} "
                                              "(train.columns overrides it for the data)")
    generate: Optional[GenerateConfig] = Field(None, description="`camelid generate` settings (model, num, lang, "
                                               "mode, ...)")
    distill: Optional[dict[str, Any]] = Field(None, description="context distillation instead of generate: the "
                                              "teacher answers the seed instructions under a system prompt the "
                                              "student never sees (camelid.generate.distill.DistillConfig)")
    train: Union[TrainConfig, StagedTrain] = Field(
        default_factory=TrainConfig, description="a `camelid train` config (data and output_dir are filled in by the "
        "run), or a staged one (`tokenizer:` + `stages:`, as `camelid train kollama2_two_stage`): each stage "
        "writes RUN_DIR/train/NAME, a stage without data trains on the run's data (`generated` in a stage's data "
        "list stands for it beside other files)")
    eval: Optional[EvalSection] = None
    serve: ServeSection = Field(default_factory=ServeSection)
    _base: Path = PrivateAttr(default_factory=Path.cwd)  # the recipe file's directory: stage inputs resolve there
    _source: str = PrivateAttr("recipe")

    @property
    def directory(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")

    @property
    def generated_file(self) -> Optional[Path]:
        """RUN_DIR/generate/data.jsonl when training data comes from generation (None with the recipe's own data)."""
        return None if self.data else self.directory / "generate" / "data.jsonl"

    def train_data(self) -> list[str]:
        """What the (last) training stage trains on: the recipe's data or the generated file."""
        return self.data or [str(self.generated_file)]

    def trains_on_generated_alone(self) -> bool:
        """Whether a training stage has nothing but the generated file (a generation that kept nothing is then an
        error; beside other files, e.g. `data: [generated, curated.jsonl]`, training goes on without it)."""
        if self.generated_file is None:
            return False
        run = self.staged()
        gen = self.generated_file.resolve()
        return run is None or any([Path(f).resolve() for f in s.config.data] == [gen] for s in run.stages)

    def staged(self) -> Optional[StagedRun]:
        """The staged train section with the run's paths filled in (None for a one-run train section)."""
        if not isinstance(self.train, StagedTrain):
            return None
        return staged_run(self.train.model_dump(), self._source, self._base, self.directory / "train",
                          self.train_data())

    @property
    def base_model(self) -> str:
        """The model training starts from: the untrained side of the before/after comparison."""
        run = self.staged()
        return run.stages[0].config.model if run else self.train.model

    @property
    def model_dir(self) -> Path:
        """Where the trained model ends up."""
        run = self.staged()
        return Path(run.stages[-1].config.output_dir) if run else self.directory / "train"

    def settings(self, section: str) -> dict[str, Any]:
        """The settings a section gives (not its defaults), as the YAML wrote them: what the run hashes and passes on."""
        value = getattr(self, section)
        return value.model_dump(mode="json", exclude_unset=True) if value is not None else {}

    def enabled(self, stage: str) -> bool:
        return {"generate": (self.generate is not None or self.distill is not None) and not self.data,
                "train": True,
                "eval": self.eval is not None, "serve": self.serve.enabled}[stage]


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML, apply `section.key=value` overrides, validate every section against its command."""
    p = Path(path)
    raw = read_yaml_mapping(p, "generate/train/eval sections", kind="recipe")
    train_raw = raw.get("train")
    staged = isinstance(train_raw, dict) and "stages" in train_raw
    # a staged train section routes its overrides as `camelid train` does: train.STAGE.key, train.tokenizer.key
    train_over = [o[len("train."):] for o in overrides or [] if staged and o.startswith("train.")]
    raw = apply_overrides(raw, [o for o in overrides or [] if not (staged and o.startswith("train."))])
    if staged:
        raw["train"] = apply_stage_overrides(raw["train"], train_over, p)
    if not isinstance(raw.get("train") or {}, dict):
        raise CamelidError(f"{p}: train must be a mapping of `camelid train` settings (or tokenizer + stages)")
    recipe = validate(Recipe, {**raw, "train": {}}, p)  # the train section alone, with its own schema's errors
    recipe.train = validate(StagedTrain if staged else TrainConfig, raw.get("train") or {}, p, prefix="train.")
    base = p.resolve().parent
    recipe._base, recipe._source = base, str(p)
    if staged:
        recipe.staged()  # every stage validated now, before anything runs
    # relative data paths in a recipe are relative to the recipe file, like a Makefile's
    recipe.data = [str(_resolve(base, d)) for d in recipe.data]
    if recipe.seeds:
        recipe.seeds = str(_resolve(base, recipe.seeds))
    if recipe.eval and recipe.eval.questions:
        recipe.eval.questions = str(_resolve(base, recipe.eval.questions))
    for key in ("data", "output_dir"):
        if not staged and key in recipe.train.model_fields_set:
            raise CamelidError(f"{p}: train.{key} is set by the run (use the recipe's top-level data / run_dir)")
    if recipe.distill is not None:
        if recipe.generate is not None:
            raise CamelidError(f"{p}: give generate or distill, not both")
        validate(DistillConfig, {"output": "x.jsonl", **recipe.distill}, p, prefix="distill.")
    return recipe


def _resolve(base: Path, path: str) -> Path | str:
    if hub_id(path) is not None:  # a Hub dataset id, not a path
        return path
    q = Path(path)
    return q if q.is_absolute() or q.exists() else base / q
