"""Local checkpoints: the directories a model spec names, and what a camelid run recorded about itself.

Every command that reads model files on disk (chat, serve, eval, train, export, weights, model check, data
render, tokenizer) asks this module, so a spec means the same thing everywhere:
- `resolve(spec)` -> `LocalCheckpoint`: the base model's directory (config.json + weights), the PEFT adapter's
  directory when the spec is an adapter or an adapter run, the tokenizer's directory (the adapter's own when it
  saved one, else the base's) and the run's `camelid.json` as a typed `RunInfo`;
- `base_checkpoint(spec)`: a full checkpoint to train from or diff against (adapters refused);
- `tokenizer_dir(spec)`: a tokenizer, also a tokenizer-only directory (`camelid tokenizer extend`);
- `template_name(...)`: which chat template a model is used with (the one fallback rule);
- `load_tokenizer(dir)`: the one way to open a tokenizer, with a one-line error.
`camelid.json` is the contract between training and everything downstream; `RunInfo` is its schema.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from camelid.core.config import validation_message
from camelid.core.io import CamelidError, dir_mode, write_json
from camelid.core.templates import TEMPLATES
from camelid.models.base import ModelError
from camelid.models.spec import EMBEDDED_HUB_ID, EMBEDDED_NAME, embedded_gguf, local_path, parse_spec

RUN_FILE = "camelid.json"
ADAPTER_FILE = "adapter_config.json"


# ---------------------------------------------------------------------------------------------- camelid.json


class RunInfo(BaseModel):
    """A finished run's `camelid.json`, written last by `camelid train` (and by `camelid export --merge`).

    Unknown keys are kept (a newer camelid may record more); every key is optional so a run written by an
    older camelid still reads."""

    model_config = ConfigDict(extra="allow")

    kind: str | None = None  # "sft"
    template: str | None = None  # the chat template trained with: chat, serve, eval and export reuse it
    base_model: str | None = None  # the spec trained from
    base_model_path: str | None = None
    method: str | None = None  # full | lora | dora | qlora | merged
    mask: str | None = None
    data: list[dict] | None = None
    eval_data: list[dict] | None = None
    config: dict[str, Any] | None = None  # the whole TrainConfig
    data_stats: dict[str, Any] | None = None
    vocab: dict[str, Any] | None = None
    curriculum: dict[str, Any] | None = None
    steps: int | None = None
    final_loss: float | None = None
    eval_loss: float | None = None
    train_time_s: float | None = None
    tokens_seen: int | None = None
    peak_memory_mb: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    world_size: int | None = None
    precision: str | None = None
    stop_token_ids: list[int] | None = None
    versions: dict[str, str] | None = None
    merged_from: dict[str, Any] | None = None  # export --merge: the adapter run this checkpoint was folded from

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "RunInfo | None":
        """The run's camelid.json, or None when the directory holds none."""
        path = Path(directory) / RUN_FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CamelidError(f"{path}: not readable as JSON ({e})") from None
        if not isinstance(raw, dict):
            raise CamelidError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise CamelidError(validation_message(e, path)) from None

    def to_dict(self) -> dict[str, Any]:
        """The keys that were set, in the order written (what `write` stores)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def write(self, directory: str | os.PathLike) -> None:
        write_json(Path(directory) / RUN_FILE, self.to_dict())


# ---------------------------------------------------------------------------------------------- transformers 4.x


LEGACY_TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # tokenizer.json as it is, in transformers 4.x and 5.x alike


def write_legacy_keys(directory: str | os.PathLike) -> None:
    """Add the keys transformers 4.x (and vLLM's transformers-4 path) reads to a checkpoint transformers 5 saved:
    `rope_theta` (and `rope_scaling`) at the top level of config.json beside 5.x's `rope_parameters` (4.x falls
    back to rope_theta 10000 without an error), `torch_dtype` beside `dtype`, and a tokenizer_class 4.x knows
    instead of `TokenizersBackend` (which 4.x cannot load)."""
    d = Path(directory)
    cfg_path = d / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        before = dict(cfg)
        for c in [cfg, *(v for v in cfg.values() if isinstance(v, dict) and "rope_parameters" in v)]:
            rope = c.get("rope_parameters")
            if isinstance(rope, dict) and "rope_theta" in rope:
                c.setdefault("rope_theta", rope["rope_theta"])
                if rope.get("rope_type", "default") != "default":
                    c.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
        if "dtype" in cfg:
            cfg.setdefault("torch_dtype", cfg["dtype"])
        if cfg != before:
            write_json(cfg_path, cfg)
    tok_path = d / "tokenizer_config.json"
    if tok_path.is_file():
        conf = json.loads(tok_path.read_text(encoding="utf-8"))
        if conf.get("tokenizer_class") == "TokenizersBackend":
            write_json(tok_path, {**conf, "tokenizer_class": LEGACY_TOKENIZER_CLASS})


# ---------------------------------------------------------------------------------------------- embedded


def cache_dir() -> Path:
    return Path(os.environ.get("CAMELID_CACHE", Path.home() / ".cache" / "camelid"))


def embedded_hf_dir() -> Path:
    """The embedded GGUF dequantised to an fp32 safetensors checkpoint (made once, atomically, then reused).

    transformers flags a model loaded with `gguf_file=` as quantised and Trainer/peft refuse it: drop the
    quantizer and save a plain checkpoint first."""
    out = cache_dir() / f"{EMBEDDED_NAME}-hf"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        write_legacy_keys(out)  # a copy made by an older camelid
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".embedded-"))
    os.chmod(tmp, dir_mode())  # mkdtemp makes it 0700; the renamed directory must read like any other
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_legacy_keys(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------- resolving


def has_tokenizer(directory: Path) -> bool:
    return (directory / "tokenizer_config.json").is_file() or (directory / "tokenizer.json").is_file()


@dataclass(frozen=True)
class LocalCheckpoint:
    """What a local spec names: a checkpoint, a PEFT adapter (its base found via adapter_config.json) or a run."""

    spec: str
    base: Path  # the full model's directory (config.json + weights)
    adapter: Path | None  # the adapter's directory, when the spec is one
    run: RunInfo | None  # camelid.json, when the spec is a camelid run

    @property
    def own(self) -> Path:
        """The directory the spec itself names (the adapter's for an adapter)."""
        return self.adapter or self.base

    @property
    def tokenizer_dir(self) -> Path:
        """The adapter's own tokenizer when it saved one (an extended vocabulary), else the base model's."""
        return self.adapter if self.adapter is not None and has_tokenizer(self.adapter) else self.base

    @property
    def name(self) -> str:
        return EMBEDDED_NAME if self.spec == "embedded" else Path(self.spec).resolve().name

    def base_dirs(self) -> list[Path]:
        """This checkpoint's directory and the base model's the run names (where an extended tokenizer began)."""
        return [self.base, *base_of(self.run)]


def portable_base(spec: str, base: Path) -> str:
    """What an adapter records as `base_model_name_or_path`: the embedded model's hub id (so plain PEFT and other
    machines find it), else the checkpoint directory the user named."""
    return EMBEDDED_HUB_ID if (spec or "embedded").strip() == "embedded" else str(base)


def adapter_base(base: str, where: Path) -> Path:
    """An adapter's base directory at load time: the embedded model for its hub id (or the old `embedded`), a
    checkpoint directory, or a hub id found in the local Hugging Face cache."""
    if base in ("embedded", EMBEDDED_HUB_ID):
        return embedded_hf_dir()
    if (Path(base) / "config.json").is_file():
        return Path(base)
    if not Path(base).is_absolute() and base.count("/") == 1:
        from transformers.utils import cached_file

        try:
            cached = cached_file(base, "config.json", local_files_only=True)
        except OSError:
            cached = None
        if cached:
            return Path(cached).parent
    raise ModelError(f"{where}: base model {base!r} not found (no config.json there, nor in the Hugging Face cache)")


def resolve(spec: str | os.PathLike) -> LocalCheckpoint:
    """`embedded`, `hf:PATH` or a directory (checkpoint, adapter or camelid run) -> its directories."""
    path_text = local_path(str(spec))
    if path_text == "embedded":
        return LocalCheckpoint("embedded", embedded_hf_dir(), None, None)
    path = Path(path_text)
    if not path.is_dir():
        raise ModelError(f"{path}: no such model directory")
    run = RunInfo.read(path)
    adapter = path / ADAPTER_FILE
    if adapter.is_file():
        base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise ModelError(f"{adapter}: field 'base_model_name_or_path' is missing")
        return LocalCheckpoint(path_text, adapter_base(base, adapter), path, run)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a transformers checkpoint, adapter or camelid run (no config.json, "
                         "adapter_config.json or camelid.json)")
    return LocalCheckpoint(path_text, path, None, run)


def base_checkpoint(spec: str | os.PathLike) -> Path:
    """A full checkpoint directory to train from, diff or rebuild: adapters are refused (merge them first)."""
    spec = str(spec).strip() or "embedded"
    if spec == "embedded":
        return embedded_hf_dir()
    path = Path(local_path(spec)).expanduser().resolve()
    if not path.is_dir():
        raise CamelidError(f"model {spec!r}: no such directory (use embedded or hf:PATH to a transformers checkpoint)")
    if (path / ADAPTER_FILE).is_file():
        raise CamelidError(f"model {spec!r} is a PEFT adapter: train from its base model, or merge it first "
                           f"(camelid export {spec} --merge)")
    if not (path / "config.json").is_file():
        raise CamelidError(f"model {spec!r}: not a transformers checkpoint (no config.json)")
    return path


def base_of(run: RunInfo | None) -> list[Path]:
    """The base model's checkpoint dir named in camelid.json (its tokenizer names an extended vocabulary)."""
    spec = (run.base_model if run is not None else None) or ""
    if spec == "embedded":
        return [embedded_hf_dir()]
    path = Path(local_path(spec)) if spec else None
    return [path] if path is not None and (path / "config.json").is_file() else []


def tokenizer_dir(spec: str) -> Path:
    """The directory holding the (fast) tokenizer for a spec: `embedded`, `hf:PATH`, a model or run directory, or
    a tokenizer-only directory."""
    spec = (spec or "embedded").strip()
    if spec == "embedded":
        return embedded_hf_dir()
    path = Path(local_path(spec))
    if (path / "tokenizer.json").is_file():
        return path
    if not path.is_dir():
        raise CamelidError(f"tokenizer {spec!r}: no such directory (use embedded, hf:PATH or a directory)")
    ckpt = resolve(path)
    for d in (ckpt.adapter, ckpt.base):
        if d is not None and (d / "tokenizer.json").is_file():
            return d
    raise CamelidError(f"{path}: no tokenizer.json here or in its base model (only fast tokenizers are supported)")


# ---------------------------------------------------------------------------------------------- tokenizer, template


def load_tokenizer(path: str | os.PathLike, require_eos: bool = False):
    """AutoTokenizer.from_pretrained, with a one-line error for a directory without a usable tokenizer.

    `require_eos`: refuse a tokenizer without an EOS token (a model trained with it could never stop)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        detail = f" ({first})" if first and not first.endswith(":") else ""
        raise CamelidError(f"{path}: no usable tokenizer here (tokenizer.json + tokenizer_config.json){detail}") from None
    if require_eos and tok.eos_token_id is None:
        raise CamelidError(f"{path}: the tokenizer has no EOS token, so a trained model could never stop "
                           "(set eos_token in tokenizer_config.json)")
    return tok


def trained_tokenizer(tokenizer, template: str | None):
    """A copy of `tokenizer` as a run saves it: its chat_template is the template the run was trained with (the
    Jinja form each shipped template declares; a `tokenizer` run keeps its own), so `apply_chat_template`,
    pipelines and servers prompt the model as training did; and its pad token is not an end token when the
    tokenizer has a spare one (Llama's choice: unk), so collators that mask pad ids never mask the EOS.
    What `camelid model check --fix` repairs, done when the files are first written."""
    tok = copy.deepcopy(tokenizer)
    if template in TEMPLATES:
        tok.chat_template = TEMPLATES[template].jinja_chat_template()
    end = TEMPLATES[template].end_token if template in TEMPLATES else None
    ends = {tok.eos_token, end} - {None}
    if (tok.pad_token is None or tok.pad_token in ends) and tok.unk_token is not None and tok.unk_token not in ends:
        tok.pad_token = tok.unk_token
    return tok


def template_name(override: str | None, run: RunInfo | None, chat_template: str | None,
                  default: str | None = None) -> str | None:
    """The chat template a model is used with: `--template`, else the run's (camelid.json), else the tokenizer's
    own chat_template, else `default` (inference picks alpaca, the trainer's default; file tools say none)."""
    return override or (run.template if run is not None else None) or ("tokenizer" if chat_template else default)


def tokenizer_for(spec: str) -> tuple[Any, RunInfo | None]:
    """(tokenizer, the run's camelid.json or None) for a local model spec, loading no weights."""
    s = parse_spec(spec)
    if s.kind == "embedded":
        return load_tokenizer(embedded_hf_dir(), require_eos=True), None
    if s.kind == "gguf":
        from transformers import AutoTokenizer

        p = Path(s.target)
        return AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name), None
    if s.kind != "hf":
        raise CamelidError(f"model {spec!r}: rendering needs a local tokenizer (embedded, hf:PATH or gguf:PATH)")
    ckpt = resolve(s.target)
    return load_tokenizer(ckpt.tokenizer_dir, require_eos=True), ckpt.run
