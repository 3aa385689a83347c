"""GGUF models through llama-cpp-python: the embedded default and any `gguf:PATH`.

Generation goes through a continuous batcher (models/batching.py): concurrent callers (the server's workers, `map`
in generate and eval) share each llama.cpp decode step instead of queueing behind one lock. The high-level `Llama`
object stays for tokenizing, metadata and the cases that want llama-cpp-python's own loop.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator

from camelid.core.templates import Template, get_template
from camelid.models.base import Chunk, ContextLengthError, Model, ModelError, Sampling
from camelid.models.batching import LlamaBatcher, default_kv_tokens

# llama.cpp's OpenMP workers spin between steps by default; on a busy machine a call from the main thread then ran
# 15-20x slower here (6 chat answers: 36-45 s vs 2.4 s). OpenMP reads this once, when llama_cpp is first loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def default_slots() -> int:
    """$CAMELID_BATCH: how many sequences decode together (16 by default: 2.1x the tokens/s of one on 2 CPU cores)."""
    return max(1, int(os.environ.get("CAMELID_BATCH") or 16))


def default_threads() -> int:
    """$CAMELID_THREADS, else half the logical CPUs (llama.cpp's own default: one per physical core). llama.cpp's
    workers spin while they wait, so a thread more than the free cores stalls every token: measured here, 2 threads
    on 2 busy vCPUs ran 10-20x slower than 1."""
    return int(os.environ.get("CAMELID_THREADS") or max(1, (os.cpu_count() or 2) // 2))


class LlamaCppModel(Model):
    def __init__(self, path: str | Path, n_ctx: int = 4096, n_threads: int | None = None, n_gpu_layers: int = 0,
                 template: Template | None = None, name: str | None = None, n_seq: int | None = None,
                 kv_tokens: int | None = None):
        """`n_seq` sequences decode together (default $CAMELID_BATCH or 16); they share `kv_tokens` KV cells
        (default $CAMELID_KV_TOKENS, else up to 4 x n_ctx within 256 MB), each request reserving prompt + max_tokens of them."""
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ModelError("the llama.cpp backend needs llama-cpp-python: pip install 'camelid[llama]'") from None
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: no such GGUF file")
        self.name = name or path.stem
        self.path = path
        threads = n_threads or default_threads()
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_gpu_layers=n_gpu_layers,
                         verbose=False)
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
        self._lock = threading.Lock()  # llama-cpp-python's own context: one `stream_sequential` at a time
        self.max_concurrency = n_seq or default_slots()
        kv = (kv_tokens or int(os.environ.get("CAMELID_KV_TOKENS") or 0)
              or default_kv_tokens(self.llm._model, self.context_length))
        self.batcher = LlamaBatcher(self.llm._model, self.llm.context_params, n_seq=self.max_concurrency,
                                    kv_tokens=max(kv, self.context_length), n_threads=threads)

    def _token_text(self, token: int) -> str | None:
        if token < 0:
            return None
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace") or None

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def prompt_tokens(self, prompt: str) -> list[int]:
        """The tokens `Llama.create_completion` evaluates for this prompt (BOS as the model wants it)."""
        if not prompt:
            bos = self.llm.token_bos()
            if bos < 0:
                raise ModelError(f"{self.name}: an empty prompt needs a BOS token, and this model has none")
            return [bos]
        return self.llm.tokenize(prompt.encode("utf-8", errors="replace"), add_bos=True, special=True)

    def _stream(self, prompt: str, sampling: Sampling) -> Iterator[Chunk]:
        tokens = self.prompt_tokens(prompt)
        n_prompt = len(tokens)
        if n_prompt >= self.context_length:
            raise ContextLengthError(f"{self.name}: prompt is {n_prompt} tokens, the context holds "
                                     f"{self.context_length}")
        max_tokens = max(1, min(sampling.max_tokens, self.context_length - n_prompt))
        return self.batcher.submit(tokens, sampling, max_tokens)

    def stream_sequential(self, prompt: str, sampling: Sampling) -> Iterator[Chunk]:
        """One request through llama-cpp-python's own loop (`create_completion`), one at a time: the reference the
        batcher is compared with in tests and benches."""
        n_prompt = len(self.prompt_tokens(prompt))
        max_tokens = max(1, min(sampling.max_tokens, self.context_length - n_prompt))
        with self._lock:
            self.llm.reset()  # a fresh evaluation, as the batcher's (no prompt cache)
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

    def stream_chat_sequential(self, messages: list[dict], sampling: Sampling | None = None) -> Iterator[Chunk]:
        return self.stream_sequential(self.chat_prompt(messages), self.chat_sampling(sampling))

    def close(self) -> None:
        batcher, self.batcher = getattr(self, "batcher", None), None
        if batcher is not None:
            batcher.close()
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.close()
