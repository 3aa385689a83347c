"""GGUF models through llama-cpp-python: the embedded default and any `gguf:PATH`.

Generation goes through a continuous batcher (models/batching.py): concurrent callers (the server's workers, `map`
in generate and eval) share each llama.cpp decode step instead of queueing behind one lock; `map`'s requests run
as reproducible groups (models/lockstep.py). The high-level `Llama` object stays for tokenizing, metadata and
`stream_sequential` (llama-cpp-python's own loop, the reference in tests and benches).
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Iterator

from camelid.core.templates import Template, get_template
from camelid.models.base import (BadInputError, Chunk, ContextLengthError, Interruptible, Model, ModelError, Sampling,
                                 cut_at_stop)
from camelid.models.batching import LlamaBatcher, default_kv_tokens

# llama.cpp's OpenMP workers spin between steps by default; on a busy machine a call from the main thread then ran
# 15-20x slower here (6 chat answers: 36-45 s vs 2.4 s). OpenMP reads this once, when llama_cpp is first loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def default_slots() -> int:
    """$CAMELID_BATCH: how many sequences decode together (16 by default; bench/answer.py on 2 CPU cores: about 1.1x
    the tokens/s of one at a time, half the time to first token at 4-8 in flight)."""
    return max(1, int(os.environ.get("CAMELID_BATCH") or 16))


def default_threads() -> int:
    """$CAMELID_THREADS, else half the logical CPUs (llama.cpp's own default: one per physical core). llama.cpp's
    workers spin while they wait, so a thread more than the free cores stalls every token: measured here, 2 threads
    on 2 busy vCPUs ran 10-20x slower than 1."""
    return int(os.environ.get("CAMELID_THREADS") or max(1, (os.cpu_count() or 2) // 2))


NUL = r"(\x00|\\x00|\\u0000|\\U00000000)"


def needs_nul(grammar: str) -> bool:
    """Whether a GBNF grammar requires a NUL somewhere: a literal holding one, or a class of NUL alone. llama.cpp keeps
    token texts as C strings, so no token matches a NUL, and sampling aborts the process when the grammar requires
    one. (A NUL inside a wider class, as in `[^\\x00-\\x1f]`, is harmless.)"""
    # literals and classes in one left-to-right scan: a class may hold a quote, a literal a bracket
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"|\[((?:[^\]\\]|\\.)*)\]', grammar):
        literal, cls = m.groups()
        if literal is not None and re.search(NUL, literal):
            return True
        if cls is not None and re.fullmatch(f"{NUL}(-{NUL})?", cls):
            return True
    return False


class LlamaCppModel(Interruptible, Model):
    batched = True  # decodes concurrent requests together; `map` in lockstep waves (models/lockstep.py)
    sampling_options = frozenset({"presence_penalty", "frequency_penalty", "logit_bias", "response_format"})

    def __init__(self, path: str | Path, n_ctx: int = 4096, n_threads: int | None = None, n_gpu_layers: int = 0,
                 template: Template | None = None, name: str | None = None, n_seq: int | None = None,
                 kv_tokens: int | None = None):
        """`n_seq` sequences decode together (default $CAMELID_BATCH or 16); they share `kv_tokens` KV cells
        (default $CAMELID_KV_TOKENS, else up to 4 x n_ctx within 256 MB), each request reserving prompt + max_tokens
        of them."""
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
        # CAMELID_FLASH_ATTN=1: flash attention (llama.cpp's own default, off in llama-cpp-python). The batch shares
        # one KV cache and the kernel skips the other sequences' masked cells (bench/answer.py: 1.5x at 8 in flight
        # with it, 1.1x without), but it changes greedy answers, so it is not the default yet
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_gpu_layers=n_gpu_layers,
                         flash_attn=os.environ.get("CAMELID_FLASH_ATTN") == "1", verbose=False)
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

    def prefix_tokens(self) -> int:
        # the GGUF says whether llama.cpp adds BOS in front of a prompt
        return int(str(self.llm.metadata.get("tokenizer.ggml.add_bos_token", "")).lower() == "true")

    def prompt_tokens(self, prompt: str) -> list[int]:
        """The tokens `Llama.create_completion` evaluates for this prompt (BOS as the model wants it)."""
        if not self.count_tokens(prompt):
            raise BadInputError(f"{self.name}: the prompt is empty", param="prompt")
        tokens = self.llm.tokenize(prompt.encode("utf-8", errors="replace"), add_bos=True, special=True)
        if len(tokens) >= self.context_length:
            raise ContextLengthError(f"{self.name}: prompt is {len(tokens)} tokens, the context holds "
                                     f"{self.context_length}")
        return tokens

    def _stream(self, prompt: str, sampling: Sampling) -> Iterator[Chunk]:
        tokens = self.prompt_tokens(prompt)
        max_tokens = max(1, min(sampling.max_tokens, self.context_length - len(tokens)))
        options = self._options(sampling)  # bad logit_bias or schema: refused here, in the caller's thread
        epoch = self._epoch
        return self._watched(self.batcher.submit(tokens, sampling, max_tokens, grammar=options.get("grammar")), epoch)

    def stream_sequential(self, prompt: str, sampling: Sampling) -> Iterator[Chunk]:
        """One request through llama-cpp-python's own loop (`create_completion`), one at a time: the reference the
        batcher is compared with in tests and benches."""
        n_prompt = len(self.prompt_tokens(prompt))
        max_tokens = max(1, min(sampling.max_tokens, self.context_length - n_prompt))
        options = self._options(sampling)
        epoch = self._epoch
        with self._lock:
            self._check(epoch)  # stopped while it waited for the context
            self.llm.reset()  # a fresh evaluation, as the batcher's (no prompt cache)
            # stop strings are cut here, not by llama.cpp: then llama.cpp ends only at EOS or max_tokens, and the
            # token count below is exact (llama.cpp's own stop could end on the EOS or on a stop string alike)
            finish, text, sent, stopped = None, "", 0, False
            hold = max((len(x) for x in sampling.stop), default=1) - 1
            stream = self.llm.create_completion(
                prompt, max_tokens=max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                seed=sampling.seed % 2 ** 32 if sampling.seed is not None else -1, stream=True, **options)
            try:
                for ev in stream:
                    self._check(epoch)
                    choice = ev["choices"][0]
                    finish = choice.get("finish_reason") or finish
                    text += choice["text"]
                    cut, stopped = cut_at_stop(text, sampling.stop)
                    if stopped:
                        if len(cut) > sent:
                            yield Chunk(cut[sent:])
                        break
                    if len(text) - hold > sent:
                        yield Chunk(text[sent:len(text) - hold])
                        sent = len(text) - hold
            finally:
                stream.close()
            if not stopped and len(text) > sent:
                yield Chunk(text[sent:])
            # the context holds every generated token but the last sampled one; at EOS that one is the EOS, which
            # OpenAI does not count
            n_eval = max(0, self.llm.n_tokens - n_prompt)
            n_out = n_eval if finish == "stop" and not stopped else min(max_tokens, n_eval + 1)
            yield Chunk("", "stop" if stopped else finish or "stop", n_prompt, n_out)

    def _options(self, s: Sampling) -> dict:
        """llama.cpp's arguments for OpenAI's penalties, logit_bias and response_format (JSON by grammar)."""
        out: dict = {"presence_penalty": s.presence_penalty, "frequency_penalty": s.frequency_penalty,
                     "repeat_penalty": 1.0}
        if s.logit_bias:
            n_vocab = self.llm.n_vocab()
            bad = [t for t in s.logit_bias if not 0 <= t < n_vocab]
            if bad:
                raise BadInputError(f"{self.name}: logit_bias names token {bad[0]}, beyond the vocabulary of "
                                    f"{n_vocab}", param="logit_bias")
            out["logit_bias"] = dict(s.logit_bias)
        fmt = s.response_format
        if fmt and fmt.get("type") in ("json_object", "json_schema"):
            from llama_cpp import LlamaGrammar
            from llama_cpp.llama_grammar import JSON_GBNF

            try:
                if fmt["type"] == "json_object":
                    out["grammar"] = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
                else:
                    schema = fmt.get("json_schema", {}).get("schema") or {}
                    out["grammar"] = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
                    if needs_nul(out["grammar"]._grammar):
                        raise ValueError("the schema asks for a NUL character, which no token can produce")
            except Exception as e:  # the converter raises ValueError, KeyError, RecursionError... on odd schemas
                raise BadInputError(f"{self.name}: cannot turn the JSON schema into a grammar "
                                    f"({type(e).__name__}: {str(e)[:200]})", param="response_format") from None
            self._check_grammar(out["grammar"])
        return out

    def _check_grammar(self, grammar) -> None:
        """Parse the grammar as llama.cpp will: llama-cpp-python hands its sampler chain a NULL on a grammar llama.cpp
        cannot parse (an empty rule from `{"enum": []}`, left recursion), which crashes the process."""
        import llama_cpp

        sampler = llama_cpp.llama_sampler_init_grammar(self.llm._model.vocab, grammar._grammar.encode("utf-8"),
                                                       grammar._root.encode("utf-8"))
        if not sampler:
            raise BadInputError(f"{self.name}: the JSON schema gives a grammar llama.cpp cannot use (an empty enum, "
                                "a type nothing satisfies, ...)", param="response_format")
        llama_cpp.llama_sampler_free(sampler)

    def stream_chat_sequential(self, messages: list[dict], sampling: Sampling | None = None) -> Iterator[Chunk]:
        return self.stream_sequential(self.chat_prompt(messages), self.chat_sampling(sampling))

    def close(self) -> None:
        self.interrupt()  # what runs ends with Cancelled, as on Ctrl-C
        batcher, self.batcher = getattr(self, "batcher", None), None
        if batcher is not None:
            batcher.close()  # ends every request it holds; its thread is gone before the weights go
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        taken = self._quiesce()
        try:
            self.llm = None
            llm.close()
        finally:
            if taken:
                self._lock.release()
