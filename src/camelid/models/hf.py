"""transformers models: a checkpoint directory, a PEFT adapter directory, or a camelid run directory.

Chat prompts are tokenized segment by segment exactly as training tokenizes them (`templates.encode`), so what
the model sees at inference is what it was trained on, token for token.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from camelid.core.io import dir_mode
from camelid.core.templates import encode, get_template
from camelid.models.base import Chunk, ContextLengthError, Model, ModelError, Sampling, cut_at_stop


def cache_dir() -> Path:
    return Path(os.environ.get("CAMELID_CACHE", Path.home() / ".cache" / "camelid"))


def embedded_hf_dir() -> Path:
    """The embedded GGUF dequantised to an fp32 safetensors checkpoint (made once, atomically, then reused).

    transformers flags a model loaded with `gguf_file=` as quantised and Trainer/peft refuse it: drop the
    quantizer and save a plain checkpoint first."""
    from camelid.models import EMBEDDED_NAME, embedded_gguf

    out = cache_dir() / f"{EMBEDDED_NAME}-hf"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
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
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path | None, dict | None]:
    """(base model dir, adapter dir or None, camelid.json or None) for a checkpoint, adapter or run directory."""
    from camelid.models import run_config

    if str(path) == "embedded":
        return embedded_hf_dir(), None, None
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: no such model directory")
    cfg = run_config(path)
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise ModelError(f"{adapter}: field 'base_model_name_or_path' is missing")
        base_dir = embedded_hf_dir() if base == "embedded" else Path(base)
        if not (base_dir / "config.json").is_file():
            raise ModelError(f"{adapter}: base model {base!r} not found (no config.json there)")
        return base_dir, path, cfg
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a transformers checkpoint, adapter or camelid run (no config.json, "
                         "adapter_config.json or camelid.json)")
    return path, None, cfg


class HFModel(Model):
    def __init__(self, path: str | Path, template: str | None = None, device: str | None = None,
                 num_gpus: int | None = None, load_8bit: bool = False, load_4bit: bool = False):
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise ModelError("the transformers backend needs torch and transformers: pip install 'camelid[train]'") from None
        base, adapter, cfg = resolve_checkpoint(path)
        self.name = Path(path).name if str(path) != "embedded" else "embedded-hf"
        self.run_config = cfg
        tok_dir = adapter if adapter is not None and (adapter / "tokenizer_config.json").is_file() else base
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        kw: dict[str, Any] = {"dtype": torch.bfloat16 if self.device == "cuda" else torch.float32}
        if load_8bit or load_4bit:
            from transformers import BitsAndBytesConfig

            kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=load_8bit, load_in_4bit=load_4bit)
        if (num_gpus or 0) > 1:
            kw["device_map"] = "auto"
            kw["max_memory"] = {i: torch.cuda.get_device_properties(i).total_memory for i in range(num_gpus)}
        model = AutoModelForCausalLM.from_pretrained(base, **kw)
        if len(self.tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(self.tokenizer))
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
        if "device_map" not in kw and not (load_8bit or load_4bit):
            model.to(self.device)
        self.model = model.eval()
        self.bos_token, self.eos_token = self.tokenizer.bos_token, self.tokenizer.eos_token
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        name = template or (cfg or {}).get("template") or ("tokenizer" if self.tokenizer.chat_template else "alpaca")
        self.template = get_template(name, self.tokenizer.chat_template, self.bos_token, self.eos_token)
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _stream(self, prompt: str, sampling: Sampling) -> Iterator[Chunk]:
        return self._generate(self.tokenizer(prompt).input_ids, sampling)

    def stream_chat(self, messages: list[dict], sampling: Sampling | None = None) -> Iterator[Chunk]:
        ids, _ = encode(self.tokenizer, self.template, messages, add_generation_prompt=True)
        return self._generate(ids, self.chat_sampling(sampling))

    def _stop_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        if self.template and self.template.end_token:
            ids.add(self.tokenizer.convert_tokens_to_ids(self.template.end_token))
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        return sorted(i for i in ids if isinstance(i, int) and i >= 0)

    def _generate(self, ids: list[int], s: Sampling) -> Iterator[Chunk]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        if len(ids) >= self.context_length:
            raise ContextLengthError(f"{self.name}: prompt is {len(ids)} tokens, the context holds "
                                     f"{self.context_length}")
        cancel = threading.Event()

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                return cancel.is_set()

        stop_ids = self._stop_ids()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        gen_kw: dict[str, Any] = dict(
            input_ids=torch.tensor([ids], device=self.model.device), attention_mask=None,
            max_new_tokens=max(1, min(s.max_tokens, self.context_length - len(ids))), eos_token_id=stop_ids,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop_ids[0],
            streamer=streamer, stopping_criteria=StoppingCriteriaList([Cancelled()]), return_dict_in_generate=True)
        if s.temperature > 0:
            gen_kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:
            gen_kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                if s.seed is not None:
                    torch.manual_seed(s.seed)
                with torch.no_grad():
                    result["out"] = self.model.generate(**gen_kw)
            except BaseException as e:  # surfaced to the consumer below
                result["error"] = e
                streamer.end()

        with self._lock:
            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            text, sent, stopped = "", 0, False
            hold = max((len(x) for x in s.stop), default=0)
            try:
                for piece in streamer:
                    text += piece
                    cut, stopped = cut_at_stop(text, s.stop)
                    if stopped:
                        cancel.set()
                        if len(cut) > sent:
                            yield Chunk(cut[sent:])
                        sent = len(cut)
                        break
                    safe = len(text) - hold
                    if safe > sent:
                        yield Chunk(text[sent:safe])
                        sent = safe
            finally:
                cancel.set()
                worker.join()
            if "error" in result:
                raise ModelError(f"{self.name}: generation failed: {result['error']}")
            if not stopped and len(text) > sent:
                yield Chunk(text[sent:])
            seq = result["out"].sequences[0][len(ids):].tolist()
            ended = stopped or (bool(seq) and seq[-1] in stop_ids)
            yield Chunk("", "stop" if ended else "length", len(ids), len(seq))
