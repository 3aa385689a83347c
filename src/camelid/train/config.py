"""The training config: one typed pydantic model that is also the YAML schema.

`camelid train CONFIG.yaml key=value ...` loads the YAML, applies dotted overrides (`lora.r=16`), and validates
everything at once, so a typo fails before the model is loaded. Defaults follow the seeds: Stanford Alpaca for full
fine-tuning (lr 2e-5, 3 epochs, 512 tokens, cosine, 3% warmup, batch 128) and alpaca-lora for adapters (r 8, alpha 16,
dropout 0.05 on q/v projections, lr 3e-4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from camelid.core.columns import parse_columns
from camelid.core.config import apply_overrides, validate
from camelid.core.io import CamelidError, read_yaml_mapping
from camelid.core.templates import MASKS, TEMPLATE_NAMES

Method = Literal["full", "lora", "dora", "qlora"]
DataFormat = Literal["alpaca", "seed-tasks", "sharegpt", "openai", "text"]
CONFIG_DIR = Path(__file__).parent / "configs"
SCHEMA_HINT = "see `camelid train --show-config` for the schema"


class LoraConfig(BaseModel):
    """Adapter settings (method lora, dora, qlora). alpaca-lora's defaults."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1, description="rank: more = more capacity and memory; 8-64 is typical")
    alpha: int = Field(16, ge=1, description="scale = alpha / r; keep alpha ~ 2r when changing r")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="regularises small data; 0 makes runs bit-reproducible "
                           "across batch shapes")
    target_modules: list[str] = Field(["q_proj", "v_proj"], description="q/v is alpaca-lora; 'all-linear' adapts "
                                      "every linear layer (better quality, slower)")
    modules_to_save: Optional[Union[list[str], Literal["auto"]]] = Field(
        None, description="modules trained fully next to the adapter and saved in it (peft modules_to_save): auto = "
        "the input embeddings and LM head when the tokenizer was extended (tokenizer, or a model trained with one), "
        "else none; new token rows only learn this way, at the cost of a full embedding matrix in every adapter")


class CurriculumConfig(BaseModel):
    """The order records are seen in (curriculum.order_examples); set, it replaces the seeded shuffle."""

    model_config = ConfigDict(extra="forbid")

    rule: Literal["field", "length", "translation_first", "shuffle"] = Field(
        ..., description="field: by a record field (numbers ascending, or the listed stages) | length: short first | "
        "translation_first: translation pairs, then the rest (KoLlama2) | shuffle: seeded permutation")
    field: Optional[str] = Field(None, description="rule field: the field ordered by; translation_first: the field "
                                 "marking translation records (else task/category/type, else detected)")
    stages: Optional[Union[int, list[Union[str, int, float]]]] = Field(
        None, description="rule field: the values in order (e.g. [easy, medium, hard]); rule length: K equal stages")

    @model_validator(mode="after")
    def _check(self) -> "CurriculumConfig":
        if self.rule == "field" and not self.field:
            raise ValueError("curriculum rule field needs curriculum.field (e.g. difficulty)")
        return self


class TrainConfig(BaseModel):
    """Everything `camelid train` does. Every field has a default that works; the comments state the trade-offs."""

    model_config = ConfigDict(extra="forbid")

    # ---- what to train
    model: str = Field("embedded", description="base model: embedded (SmolLM2-135M) | hf:PATH (checkpoint dir)",
                       json_schema_extra={"flags": ("--model", "-m")})
    template: str = Field("alpaca", description="prompt template; chat/serve/eval reuse it from camelid.json: "
                          + ", ".join(TEMPLATE_NAMES))
    data: list[str] = Field(default_factory=list, json_schema_extra={"flags": ("--data", "-d")},
                            description="training files (alpaca, seed-tasks, sharegpt, openai; "
                            "JSON or JSONL, detected; Parquet, Arrow, CSV files or directories of them; Hub "
                            "datasets hf://datasets/OWNER/NAME/SPLIT or OWNER/NAME:SPLIT)")
    columns: Optional[dict[str, str]] = Field(
        None, description="read data (and eval_data) whose field names differ: {instruction: prompt, output: "
        "completion} reads column prompt as instruction (also columns=instruction=prompt,output=completion)")
    data_format: Optional[DataFormat] = Field(
        None, description="force a format instead of detecting it; text = raw text (plain files, or the text fields "
        "of JSON/JSONL) cut into max_length pieces, loss on every token (template and mask do not apply): "
        "pre-training, e.g. teaching new token rows a language")
    tokenizer: Optional[str] = Field(None, description="tokenizer directory to train with instead of the model's, "
                                     "e.g. from `camelid tokenizer extend`: the embeddings and LM head grow to it, new "
                                     "rows = the mean of the old ones (nothing is done when the sizes match); they "
                                     "know nothing yet, so train them (trainable or lora.modules_to_save)")
    trainable: Optional[list[Literal["embeddings"]]] = Field(
        None, description="method full only: train only these, freezing the rest; [embeddings] = input embeddings "
        "and LM head (Chinese-LLaMA stage 1: new rows learn, the model's knowledge stays; far fewer weights move)")
    curriculum: Optional[CurriculumConfig] = Field(
        None, description="a fixed data order (e.g. translation pairs first) instead of the seeded shuffle; steps "
        "follow it in order, group_by_length is off; the order is recorded in camelid.json")
    eval_data: list[str] = Field(default_factory=list, description="held-out files for eval loss")
    val_size: float = Field(0, ge=0, description="hold out this many training records (<1: a fraction) for eval")
    method: Method = Field("lora", description="full (best quality, most memory) | lora | dora (slower, a little "
                           "better) | qlora (4-bit base: least memory, slower)")
    lora: LoraConfig = Field(default_factory=LoraConfig)

    # ---- what the loss sees
    mask: Literal["assistant", "last", "all"] = Field(
        "assistant", description="train on: every assistant turn | only the last one | everything (prompts too)")
    max_length: int = Field(512, ge=8, description="tokens per record; longer records are truncated (see truncation)")
    truncation: Literal["drop_partial", "keep"] = Field(
        "drop_partial", description="a record cut at max_length: drop_partial stops training the turn that lost its "
        "EOS (a record left with nothing to train is dropped and counted); keep trains the cut turn without EOS "
        "(Stanford's behaviour; teaches answers that never end)")

    # ---- batches and speed
    micro_batch_size: int = Field(4, ge=1, description="sequences per forward pass per process: more = faster, "
                                  "more memory")
    global_batch_size: int = Field(128, ge=1, description="sequences per optimizer step over all processes "
                                   "(gradient accumulation fills the gap); Alpaca used 128")
    packing: bool = Field(True, description="padding-free: a micro-batch is one row of concatenated sequences with "
                          "restarting position_ids (no padding compute; faster); false pads each micro-batch")
    group_by_length: bool = Field(True, description="sort each step's sequences by length so micro-batches need "
                                  "less padding (packing off); the step's content, and its gradient, is unchanged")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: much less memory, "
                                         "~30% slower")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto = bf16 mixed precision on GPUs that support it, else fp32 (CPU); bf16 on a CPU "
        "with AMX (Xeon Sapphire Rapids+) trains LoRA ~1.8x faster than fp32")

    # ---- optimisation
    epochs: float = Field(3, gt=0, description="passes over the data")
    max_steps: Optional[int] = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    lr: Optional[float] = Field(None, gt=0, description="learning rate; default 2e-5 for full, 3e-4 for adapters")
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, description="applied to matrices only, never to norms or biases")
    max_grad_norm: float = Field(1.0, ge=0, description="clip; 0 disables")
    seed: int = 42

    # ---- output
    output_dir: str = Field("runs/sft", json_schema_extra={"flags": ("--output-dir", "-o")}, description="run directory: model or adapter, tokenizer, camelid.json, "
                            "trainer_log.jsonl, loss.png, checkpoints/")
    overwrite: bool = Field(False, description="replace a finished run in output_dir")
    resume: bool = Field(True, description="continue from the newest checkpoint in output_dir when there is one")
    save_steps: Optional[int] = Field(None, ge=1, description="checkpoint every N steps (optimizer, scheduler, RNG, "
                                      "data position) so a killed run resumes; null = none (the final model is "
                                      "always saved)")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept (oldest removed)")
    log_steps: int = Field(1, ge=1)
    eval_steps: Optional[int] = Field(None, ge=1, description="eval loss (and samples) every N steps and at the end")
    eval_prompts: list[str] = Field(default_factory=list, description="user prompts answered greedily at each eval")
    sample_max_tokens: int = Field(64, ge=1)
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list, description="experiment trackers that also get the logged scalars (loss, lr, grad norm, "
        "tokens/s, eval loss) and the config: tensorboard (RUN/tensorboard/), wandb (RUN/wandb/; WANDB_MODE=offline "
        "stays local), mlflow (file:RUN/mlruns unless MLFLOW_TRACKING_URI); trainer_log.jsonl is always written")

    @field_validator("columns", mode="before")
    @classmethod
    def _columns(cls, value: Any) -> Any:
        try:
            return parse_columns(value, "columns") or None
        except CamelidError as e:
            raise ValueError(str(e).removeprefix("columns: ")) from None

    @field_validator("data", "eval_data", "report_to", mode="before")
    @classmethod
    def _one_file(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # `data: file.json` means one file (report_to: one tracker)

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.template not in TEMPLATE_NAMES:
            raise ValueError(f"template {self.template!r} unknown; choose one of {', '.join(TEMPLATE_NAMES)}")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size "
                             f"{self.micro_batch_size}")
        if self.mask not in MASKS:
            raise ValueError(f"mask {self.mask!r}")
        if self.precision == "fp16" and self.method == "full":
            raise ValueError("fp16 full fine-tuning overflows without a loss scaler; use bf16 or fp32")
        if self.trainable and self.method != "full":
            raise ValueError(f"trainable applies to method full; with {self.method} train the embeddings with "
                             "lora.modules_to_save: auto")
        if self.lora.modules_to_save and self.method == "full":
            raise ValueError("lora.modules_to_save applies to adapter methods (lora, dora, qlora); method full "
                             "trains every module (or the trainable ones)")
        if self.curriculum is not None and self.data_format == "text":
            raise ValueError("curriculum orders instruction records; data_format text has none (raw text is cut "
                             "into equal chunks)")
        return self

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (2e-5 if self.method == "full" else 3e-4)

    def grad_accum(self, world_size: int = 1) -> int:
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise CamelidError(f"global_batch_size {self.global_batch_size} must be a multiple of micro_batch_size x "
                               f"processes = {self.micro_batch_size} x {world_size}")
        return self.global_batch_size // per_step


# ------------------------------------------------------------------------------------------------ loading


def config_file(path: str | Path) -> Path:
    """A config path, or the name of a shipped config (`alpaca_lora`, `kollama2_two_stage.yaml`)."""
    p = Path(path)
    if not p.is_file():
        shipped = CONFIG_DIR / p.name if p.suffix else CONFIG_DIR / f"{p.name}.yaml"
        if not shipped.is_file():
            raise CamelidError(f"{path}: no such config file (shipped: {', '.join(shipped_configs())})")
        p = shipped
    return p


def read_config_file(path: str | Path) -> tuple[Path, dict]:
    """(the file, its settings) for a config path or shipped name."""
    p = config_file(path)
    return p, read_yaml_mapping(p)


def is_staged(raw: dict) -> bool:
    """A multi-stage config (`stages:` list, run by train/multistage.py) rather than one run."""
    return "stages" in raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **fields: Any) -> TrainConfig:
    """Config from a YAML file (or defaults), then `key=value` overrides, then keyword fields; validated once."""
    raw: dict = {}
    if path is not None:
        p, raw = read_config_file(path)
        if is_staged(raw):
            raise CamelidError(f"{p} is a staged config (stages: ...): run it with `camelid train {path}`")
    return validate_config(raw, overrides, path, **fields)


def validate_config(raw: dict, overrides: list[str] | None = None, where: str | Path | None = None,
                    **fields: Any) -> TrainConfig:
    """A TrainConfig from settings, `key=value` overrides and keyword fields; errors name every bad setting."""
    raw = apply_overrides(raw, list(overrides or []))
    raw.update({k: v for k, v in fields.items() if v is not None})
    return validate(TrainConfig, raw, where, hint=SCHEMA_HINT)


def shipped_configs() -> list[str]:
    return sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
