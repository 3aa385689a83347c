"""transformers models: a checkpoint directory, a PEFT adapter directory, or a camelid run directory.

Chat prompts are tokenized segment by segment exactly as training tokenizes them (`tokenize.encode`), so what
the model sees at inference is what it was trained on, token for token.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Iterator

from camelid.core.templates import get_template
from camelid.core.tokenize import encode, special_prefix
from camelid.models.base import (BadInputError, Chunk, ContextLengthError, Interruptible, Model, ModelError, Sampling,
                                 cut_at_stop)
from camelid.models.checkpoint import load_tokenizer, resolve, template_name
from camelid.models.hf_batching import HFBatcher


class HFModel(Interruptible, Model):
    batched = True  # decodes concurrent requests together; `map` in lockstep waves (models/lockstep.py)
    sampling_options = frozenset({"presence_penalty", "frequency_penalty", "logit_bias"})

    def __init__(self, path: str | Path, template: str | None = None, device: str | None = None,
                 num_gpus: int | None = None, load_8bit: bool = False, load_4bit: bool = False):
        try:
            import torch
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise ModelError("the transformers backend needs torch and transformers: pip install 'camelid[train]'") from None
        ckpt = resolve(path)
        base, adapter = ckpt.base, ckpt.adapter
        self.name = Path(path).name if str(path) != "embedded" else "embedded-hf"
        self.run = ckpt.run
        self.tokenizer = load_tokenizer(ckpt.tokenizer_dir)
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
        name = template_name(template, self.run, self.tokenizer.chat_template, default="alpaca")
        self.template = get_template(name, self.tokenizer.chat_template, self.bos_token, self.eos_token)
        self._lock = threading.Lock()  # `generate_sequential`: one at a time
        # requests that wait together decode together; on a GPU a wide batch costs little more than one row
        self.max_concurrency = int(os.environ.get("CAMELID_BATCH") or (32 if self.device == "cuda" else 8))
        stop_ids = self._stop_ids()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop_ids[0]
        self.batcher = HFBatcher(self.model, self.tokenizer, stop_ids, pad, self.max_concurrency)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def prefix_tokens(self) -> int:
        return len(special_prefix(self.tokenizer))

    def _stream(self, prompt: str, sampling: Sampling) -> Iterator[Chunk]:
        return self._submit(self.tokenizer(prompt).input_ids, sampling)

    def stream_chat(self, messages: list[dict], sampling: Sampling | None = None) -> Iterator[Chunk]:
        ids, _ = encode(self.tokenizer, self.template, messages, add_generation_prompt=True)
        return self._submit(ids, self.chat_sampling(sampling))

    def _submit(self, ids: list[int], s: Sampling) -> Iterator[Chunk]:
        if len(ids) >= self.context_length:
            raise ContextLengthError(f"{self.name}: prompt is {len(ids)} tokens, the context holds "
                                     f"{self.context_length}")
        processors = openai_logits_processors(s, ids, len(self.tokenizer))  # bad logit_bias: refused here
        epoch = self._epoch
        return self._watched(self.batcher.submit(ids, s, max(1, min(s.max_tokens, self.context_length - len(ids))),
                                                 processors), epoch)

    def stream_sequential(self, prompt: str, sampling: Sampling) -> Iterator[Chunk]:
        """One request through `model.generate` alone: the reference the batcher is compared with."""
        return self._generate(self.tokenizer(prompt).input_ids, sampling)

    def stream_chat_sequential(self, messages: list[dict], sampling: Sampling | None = None) -> Iterator[Chunk]:
        ids, _ = encode(self.tokenizer, self.template, messages, add_generation_prompt=True)
        return self._generate(ids, self.chat_sampling(sampling))

    def close(self) -> None:
        self.interrupt()  # what runs ends with Cancelled, as on Ctrl-C
        batcher, self.batcher = getattr(self, "batcher", None), None
        if batcher is not None:
            batcher.close()
        if self._quiesce():  # a `stream_sequential` still running has stopped
            self._lock.release()

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
        epoch, model = self._epoch, self

        class Stopped(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                return cancel.is_set() or model._epoch != epoch

        stop_ids = self._stop_ids()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        gen_kw: dict[str, Any] = dict(
            input_ids=torch.tensor([ids], device=self.model.device), attention_mask=None,
            max_new_tokens=max(1, min(s.max_tokens, self.context_length - len(ids))), eos_token_id=stop_ids,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop_ids[0],
            streamer=streamer, stopping_criteria=StoppingCriteriaList([Stopped()]), return_dict_in_generate=True)
        processors = openai_logits_processors(s, ids, len(self.tokenizer))
        if processors:
            gen_kw["logits_processor"] = processors
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
            self._check(epoch)
            if "error" in result:
                raise ModelError(f"{self.name}: generation failed: {result['error']}")
            if not stopped and len(text) > sent:
                yield Chunk(text[sent:])
            seq = result["out"].sequences[0][len(ids):].tolist()
            eos = bool(seq) and seq[-1] in stop_ids
            ended = stopped or eos
            # OpenAI's completion_tokens leaves out the end-of-sequence token
            yield Chunk("", "stop" if ended else "length", len(ids), len(seq) - (1 if eos and not stopped else 0))


def openai_logits_processors(s: Sampling, prompt_ids: list[int], vocab: int) -> list:
    """OpenAI's presence/frequency penalties and logit_bias as a transformers logits processor: each generated
    token's logit drops by presence_penalty once plus frequency_penalty per occurrence (OpenAI's formula);
    logit_bias is added as is."""
    if not (s.presence_penalty or s.frequency_penalty or s.logit_bias):
        return []
    import torch
    from transformers import LogitsProcessor

    bias = dict(s.logit_bias or {})
    bad = [t for t in bias if not 0 <= t < vocab]
    if bad:
        raise BadInputError(f"logit_bias names token {bad[0]}, beyond the vocabulary of {vocab}", param="logit_bias")
    start = len(prompt_ids)

    class OpenAIPenalties(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores.clone()
            if s.presence_penalty or s.frequency_penalty:
                for row, seq in enumerate(input_ids[:, start:]):
                    if seq.numel():
                        counts = torch.bincount(seq, minlength=scores.shape[-1])[: scores.shape[-1]].to(scores.dtype)
                        scores[row] -= counts * s.frequency_penalty + (counts > 0).to(scores.dtype) * s.presence_penalty
            for token, b in bias.items():
                if token < scores.shape[-1]:
                    scores[:, token] += b
            return scores

    return [OpenAIPenalties()]
