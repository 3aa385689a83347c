"""Model cards: the README.md a run directory, a merged checkpoint or a GGUF export carries, in the Hub's format
(YAML front matter that `huggingface_hub.ModelCard` parses, then Markdown), so `hf upload REPO DIR` gives a page
that names the base model, the data, the library that loads it and the license.

Front matter: `base_model` (a Hub id: the embedded model's, or a base found in the Hugging Face cache; a local
directory is named in the body instead), `datasets` (Hub ids only; local files are listed in the body with their
SHA-256), `library_name` (peft for an adapter, transformers for a full or merged checkpoint; a GGUF-only directory
gets the `gguf` tag), `license` (the base's, when its own card or the embedded model says), `pipeline_tag` and `tags`.
The body: how it was trained (method, epochs, learning rate, steps, records and tokens, final and eval loss from
camelid.json) and how to load it (transformers / PEFT, llama.cpp and Ollama for GGUF, camelid).

Here in `models` (not `modelfiles`) because both `camelid train` and `camelid export` write one. A README.md someone
wrote is never replaced (the unfilled template PEFT writes beside an adapter is).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from camelid.core.io import write_text
from camelid.core.tables import hub_id
from camelid.models.checkpoint import ADAPTER_FILE, RunInfo
from camelid.models.spec import EMBEDDED_HUB_ID, local_path

CARD_FILE = "README.md"
MARK = "<!-- written by camelid: rewritten on each train/export; delete this line to keep your own edits -->"
KNOWN_LICENSES = {EMBEDDED_HUB_ID: "apache-2.0"}  # the embedded model's card says Apache-2.0
_HUB_CACHE_DIR = re.compile(r"models--([^/]+)--([^/]+)/snapshots/")


def base_hub_id(run: RunInfo | None) -> str | None:
    """The Hub id of the model a run started from, when there is one: the embedded model's, a base whose path lies
    in the Hugging Face cache (models--OWNER--NAME/snapshots/...), or a base checkpoint's own card's base_model."""
    if run is None:
        return None
    spec = (run.base_model or "").strip()
    if spec in ("", "embedded", EMBEDDED_HUB_ID):
        return EMBEDDED_HUB_ID
    for text in (run.base_model_path or "", local_path(spec)):
        m = _HUB_CACHE_DIR.search(text.replace(os.sep, "/") + "/")
        if m:
            return f"{m.group(1)}/{m.group(2)}"
    return None


def _base_card(run: RunInfo | None) -> dict:
    """The front matter of the base checkpoint's own README.md, when it has one."""
    if run is None or not run.base_model_path:
        return {}
    return read_front_matter(Path(run.base_model_path) / CARD_FILE)


def read_front_matter(path: Path) -> dict:
    """A card's YAML front matter ({} when there is no card or it holds none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    m = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return {}
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _hub_datasets(run: RunInfo | None) -> tuple[list[str], list[dict]]:
    """(Hub dataset ids, local files) of a run's training data."""
    hub, local = [], []
    for d in (run.data or []) if run else []:
        path = str(d.get("path", ""))
        h = hub_id(path) if path else None
        if h is not None:
            if h.repo not in hub:
                hub.append(h.repo)
        else:
            local.append(d)
    return hub, local


def front_matter(run: RunInfo | None, kind: str, base: str | None, license: str | None,
                 gguf: bool = False) -> dict[str, Any]:
    method = (run.method if run else None) or ("merged" if kind == "transformers" else None)
    trained = (run.merged_from or {}).get("method") if run and run.method == "merged" else method
    tags = ["camelid"]
    if run is not None and run.kind == "sft" or (run and run.merged_from):
        tags.append("sft")
    if trained in ("lora", "qlora", "dora"):
        tags.append(trained)
        if trained != "lora":
            tags.append("lora")
    if trained == "full":
        tags.append("full-fine-tuning")
    if method == "merged":
        tags.append("merged")
    if kind == "gguf" or gguf:
        tags.append("gguf")
    meta: dict[str, Any] = {}
    if base:
        meta["base_model"] = base
    hub, _ = _hub_datasets(run)
    if hub:
        meta["datasets"] = hub
    if kind in ("peft", "transformers"):
        meta["library_name"] = kind
    if license:
        meta["license"] = license
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = tags
    return meta


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _training(run: RunInfo) -> list[str]:
    cfg = run.config or {}
    trained = (run.merged_from or {}).get("method") if run.method == "merged" else run.method
    rows: list[tuple[str, Any]] = [("method", trained)]
    lora = cfg.get("lora") or {}
    if trained in ("lora", "qlora", "dora") and lora:
        rows.append(("adapter", f"r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
                     f"target_modules={lora.get('target_modules')}"))
    rows += [("prompt template", run.template), ("loss on", f"{run.mask} turns" if run.mask else None),
             ("epochs", cfg.get("epochs") if not cfg.get("max_steps") else f"max_steps={cfg['max_steps']}"),
             ("optimizer steps", run.steps), ("learning rate", cfg.get("lr")),
             ("lr schedule", f"{cfg.get('lr_scheduler')}, warmup {cfg.get('warmup_ratio')}" if cfg else None),
             ("global batch", cfg.get("global_batch_size")), ("max length", cfg.get("max_length")),
             ("precision", "fp32" if run.precision == "no" else run.precision), ("processes", run.world_size)]
    stats = run.data_stats or {}
    if stats:
        rows += [("records read", stats.get("records")), ("examples trained", stats.get("kept")),
                 ("tokens (trained)", f"{_fmt(stats.get('tokens', 0))} ({_fmt(stats.get('trained_tokens', 0))})")]
    rows += [("final training loss", run.final_loss), ("eval loss", run.eval_loss),
             ("training time", f"{run.train_time_s:.0f} s" if run.train_time_s is not None else None)]
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows if v not in (None, "", {})]
    return lines


def _data_lines(run: RunInfo) -> list[str]:
    hub, local = _hub_datasets(run)
    out = [f"- [{h}](https://huggingface.co/datasets/{h}) (Hugging Face Hub)" for h in hub]
    out += [f"- `{Path(str(d.get('path'))).name}` (local file, sha256 `{str(d.get('sha256', ''))[:16]}...`)"
            for d in local]
    return out


def _usage(kind: str, repo: str, run: RunInfo | None, ggufs: list[str]) -> list[str]:
    chat = ["messages = [{\"role\": \"user\", \"content\": \"Give three tips for staying healthy.\"}]",
            "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\")",
            "out = model.generate(ids, max_new_tokens=128)",
            "print(tokenizer.decode(out[0][ids.shape[1]:], skip_special_tokens=True))"]
    if kind == "peft":
        return ["```python", "from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                f"model = AutoPeftModelForCausalLM.from_pretrained(\"{repo}\")",
                f"tokenizer = AutoTokenizer.from_pretrained(\"{repo}\")", *chat, "```", "",
                "With camelid, on a local copy (`hf download REPO --local-dir DIR`): `camelid chat --model hf:DIR`; "
                "`camelid export DIR --merge` folds the adapter into a full checkpoint."]
    if kind == "transformers":
        return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f"model = AutoModelForCausalLM.from_pretrained(\"{repo}\")",
                f"tokenizer = AutoTokenizer.from_pretrained(\"{repo}\")", *chat, "```", "",
                "With camelid, on a local copy (`hf download REPO --local-dir DIR`): `camelid chat --model hf:DIR`."]
    out = []
    for g in ggufs:
        modelfile = Path(g).with_suffix(".Modelfile").name
        out += ["```bash", f"llama-cli -m {g} -cnv", f"ollama create my-model -f {modelfile} && ollama run my-model",
                f"camelid chat --model gguf:{g}", "```"]
    return out


def model_card(directory: Path, run: RunInfo | None = None, repo: str | None = None) -> str:
    """The README.md text for a model directory: what it holds (adapter, checkpoint, GGUF files) decides the
    library and the loading snippet; `run` (default: the directory's camelid.json) the training facts."""
    directory = Path(directory)
    run = run if run is not None else RunInfo.read(directory)
    ggufs = sorted(p.name for p in directory.glob("*.gguf"))
    if (directory / ADAPTER_FILE).is_file():
        kind = "peft"
    elif (directory / "config.json").is_file():
        kind = "transformers"
    elif ggufs:
        kind = "gguf"
    else:
        kind = "transformers"
    base = base_hub_id(run)
    own = _base_card(run)
    license = KNOWN_LICENSES.get(base or "") or (own.get("license") if isinstance(own.get("license"), str) else None)
    base = base or (own.get("base_model") if isinstance(own.get("base_model"), str) else None)
    meta = front_matter(run, kind, base, license, gguf=bool(ggufs))
    name = repo or directory.name
    what = {"peft": "a PEFT adapter", "transformers": "a full checkpoint", "gguf": "GGUF file(s) for llama.cpp"}[kind]
    base_text = (f"[{base}](https://huggingface.co/{base})" if base
                 else f"`{run.base_model}`" if run and run.base_model else "its base model")
    lines = [MARK, "", f"# {name}", "",
             f"{what[0].upper() + what[1:]} fine-tuned from {base_text} with "
             "camelid (supervised fine-tuning on instruction data)."]
    if ggufs:
        lines += ["", "GGUF: " + ", ".join(f"`{g}`" for g in ggufs) + " (for llama.cpp, with an Ollama Modelfile "
                  "beside each)."]
    if run is not None and (run.config or run.steps is not None):
        lines += ["", "## Training", "", *_training(run)]
        data = _data_lines(run)
        if data:
            lines += ["", "## Data", "", *data]
    lines += ["", "## How to use", "", *_usage(kind, name, run, ggufs)]
    if ggufs and kind != "gguf":
        lines += ["", "### GGUF (llama.cpp, Ollama)", "", *_usage("gguf", name, run, ggufs)]
    if run is not None and run.template:
        lines += ["", f"The model was trained with camelid's `{run.template}` prompt format; the tokenizer's "
                  "chat_template renders it, so `apply_chat_template` builds the same prompts."]
    head = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{head}---\n\n" + "\n".join(lines) + "\n"


def replaceable(text: str) -> bool:
    """A README.md camelid may replace: its own card, or huggingface_hub's unfilled template that PEFT's
    `save_pretrained` writes beside every adapter (its base_model is the local path trained from)."""
    return MARK in text or ("# Model Card for Model ID" in text and "[More Information Needed]" in text)


def write_model_card(directory: str | os.PathLike, run: RunInfo | None = None, repo: str | None = None) -> Path | None:
    """Write README.md into `directory` (atomically). Returns its path, or None when a README.md someone wrote is
    already there (left as it is; the caller says so)."""
    path = Path(directory) / CARD_FILE
    if path.is_file():
        try:
            old = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        if not replaceable(old):
            return None
    write_text(path, model_card(Path(directory), run, repo))
    return path
