"""GGUF models through llama-cpp-python: the embedded default and any `gguf:PATH`."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator

from camelid.core.templates import Template, get_template
from camelid.models.base import Chunk, ContextLengthError, Model, ModelError, Sampling

# llama.cpp's OpenMP workers spin between steps by default; on a busy machine a call from the main thread then ran
# 15-20x slower here (6 chat answers: 36-45 s vs 2.4 s). OpenMP reads this once, when llama_cpp is first loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def default_threads() -> int:
    """$CAMELID_THREADS, else half the logical CPUs (llama.cpp's own default: one per physical core). llama.cpp's
    workers spin while they wait, so a thread more than the free cores stalls every token: measured here, 2 threads
    on 2 busy vCPUs ran 10-20x slower than 1."""
    return int(os.environ.get("CAMELID_THREADS") or max(1, (os.cpu_count() or 2) // 2))


class LlamaCppModel(Model):
    def __init__(self, path: str | Path, n_ctx: int = 4096, n_threads: int | None = None, n_gpu_layers: int = 0,
                 template: Template | None = None, name: str | None = None):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ModelError("the llama.cpp backend needs llama-cpp-python: pip install 'camelid[llama]'") from None
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: no such GGUF file")
        self.name = name or path.stem
        self.path = path
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads or default_threads(),
                         n_gpu_layers=n_gpu_layers, verbose=False)
        self.context_length = self.llm.n_ctx()
        self.bos_token = self._token_text(self.llm.token_bos())
        self.eos_token = self._token_text(self.llm.token_eos())
        chat_template = self.llm.metadata.get("tokenizer.chat_template")
        if template is not None:
            self.template = template
        elif chat_template:
            self.template = get_template("tokenizer", chat_template, self.bos_token, self.eos_token)
        else:
            self.template = get_template("alpaca")
        self._lock = threading.Lock()  # one llama context: one generation at a time

    def _token_text(self, token: int) -> str | None:
        if token < 0:
            return None
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace") or None

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def prefix_tokens(self) -> int:
        # the GGUF says whether llama.cpp adds BOS in front of a prompt
        return int(str(self.llm.metadata.get("tokenizer.ggml.add_bos_token", "")).lower() == "true")

    def _stream(self, prompt: str, sampling: Sampling) -> Iterator[Chunk]:
        n_prompt = self.count_tokens(prompt)
        if n_prompt >= self.context_length:
            raise ContextLengthError(f"{self.name}: prompt is {n_prompt} tokens, the context holds "
                                     f"{self.context_length}")
        max_tokens = max(1, min(sampling.max_tokens, self.context_length - n_prompt))
        with self._lock:
            finish = None
            stream = self.llm.create_completion(
                prompt, max_tokens=max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                stop=sampling.stop or None, seed=sampling.seed if sampling.seed is not None else -1, stream=True)
            try:
                for ev in stream:
                    choice = ev["choices"][0]
                    finish = choice.get("finish_reason") or finish
                    if choice["text"]:
                        yield Chunk(choice["text"])
            finally:
                stream.close()
            # the context holds every generated token but the last sampled one (never evaluated)
            n_out = min(max_tokens, max(0, self.llm.n_tokens - n_prompt + 1))
            yield Chunk("", finish or "stop", n_prompt, n_out)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.close()
