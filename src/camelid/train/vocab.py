"""Vocabulary extension for non-English training (Chinese-LLaMA style) and the matching embedding resize.

Why: the embedded SmolLM2 tokenizer spends about 2 tokens per Korean character and 1.8 per Chinese one, so a
Korean answer costs twice the context and twice the decoding steps of the same length in English.
Chinese-LLaMA trained a SentencePiece model on Chinese text and merged its pieces into LLaMA's SentencePiece
vocabulary, appending ids after the old ones; the embeddings grow by the same number of rows and train fully.
camelid starts each new row at the mean of the rows of the pieces the old tokenizer cut the token into (Fast
Vocabulary Transfer) rather than at the mean of all old rows (Stanford Alpaca's `smart_tokenizer_and_embedding_resize`,
kept for added special tokens): the new tokens then start distinguishable, where the model already read them.

How, for a byte-level BPE tokenizer (GPT-2 style, like SmolLM2's): we *continue BPE training* on top of the
base tokenizer. Every corpus word (the base pre-tokenizer's unit, e.g. `Ġ한국어는`) is first cut by the base
tokenizer; the most frequent adjacent pair of tokens is merged into a new token, repeatedly, and each merge is
appended to the model's merge list with a rank after every old merge and a new id after every old id.
Three properties follow from how BPE is applied (lowest-rank applicable merge first):
  (a) every old token keeps its id: new ids are appended;
  (b) text without the new scripts tokenizes exactly as before: new merges rank after all old ones, so they
      fire only once no old merge applies, and each joins bytes of a word made only of non-Latin letters
      (we learn from those words alone), which English text, code, accents or emoji never contain in that form;
  (c) the base segmentation of a Korean word is the starting point the new merges were learned on, so every
      merge is reachable at inference time, unlike merging an independently trained BPE, whose merge paths
      the base merges (which fire first) break.
Coverage (SentencePiece's `character_coverage`): phase 1 makes every character of the corpus one token (alone
and, for scripts that space words, after a space), plus optionally a national charset (`charset("hangul")`:
KS X 1001's 2,350 syllables; `charset("hanzi")`: GB 2312's 3,755 level-1 hanzi) so held-out text with rarer
characters does not fall back to 2-3 byte tokens; phase 2 is ordinary BPE over whole characters.

Measured (bench/tokenizer.py, shipped 10K-character Korean corpus + KS X 1001, held-out Korean text): 2.04 ->
0.63 tokens per character with merges (69% fewer), English unchanged. `tokenizer.add_tokens` with the same pieces
reaches the same count (0.62) and also leaves English unchanged; with pieces that lack their leading space (as
SentencePiece's `▁` pieces become) it only reaches 0.87, since every word then costs an extra `Ġ` token. Merges
win on the rest: added tokens are matched greedily in the raw text before pre-tokenization, ignoring word
boundaries and living outside the BPE model; llama.cpp/GGUF conversion treats them as user-defined tokens with
their own matching; with merges the tokenizer.json stays one plain byte-level BPE model that any BPE runtime reads.
SentencePiece unigram pieces cannot be merged into a byte-level BPE model without inventing merge paths, so no
unigram option is offered.

Model side: `resize_embeddings` (mean-of-pieces init, tied-aware) and `lora_modules_to_save` / `lora_embedding_kwargs`
so LoRA trains the embeddings and LM head fully (Chinese-LLaMA-Alpaca's `modules_to_save`).
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import tempfile
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from camelid.core.io import CamelidError, sha256_file, write_json
from camelid.data.texts import read_texts
from camelid.models.checkpoint import tokenizer_dir

EXTENSION_FILE = "vocab_extension.json"


# ---------------------------------------------------------------------------------------------- extension


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character stand-ins for bytes, inverted (`Ġ` -> 0x20)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTES = _byte_decoder()
_ENCODE = {b: c for c, b in _BYTES.items()}


def token_text(token: str) -> str:
    """A byte-level token as text (partial UTF-8 sequences shown as U+FFFD)."""
    return bytes(_BYTES[c] for c in token).decode("utf-8", errors="replace")


def is_new_script_word(word: str) -> bool:
    """True for a word (optionally with its leading space) made only of non-Latin letters and marks: the only
    words new merges are learned from, which is what keeps every other text's tokenization unchanged."""
    rest = word[1:] if word.startswith(" ") else word
    return bool(rest) and all(not c.isascii() and unicodedata.category(c)[0] in "LM"
                              and not unicodedata.name(c, "LATIN").startswith("LATIN") for c in rest)


@dataclass
class Extension:
    """What `extend_tokenizer` learned: new tokens (byte-level strings, in id order) and merges (in rank order)."""

    tokens: list[str]
    merges: list[tuple[str, str]]
    words: int  # distinct corpus words learned from
    occurrences: int  # their occurrences

    def info(self) -> dict:
        return {"added_tokens": len(self.tokens), "added_merges": len(self.merges), "words": self.words,
                "occurrences": self.occurrences,
                "examples": [x for x in map(token_text, self.tokens) if len(x.strip()) > 1 and "\ufffd" not in x][:20]}


CHARSETS = {"hangul": "the 2,350 Hangul syllables of KS X 1001", "hanzi": "the 3,755 level-1 hanzi of GB 2312"}


def charset(name: str) -> str:
    """Common characters of a script, from the national standards Python's codecs carry (no download)."""
    if name == "hangul":
        return "".join(bytes([a, b]).decode("euc-kr") for a in range(0xB0, 0xC9) for b in range(0xA1, 0xFF))
    if name == "hanzi":
        return "".join(bytes([a, b]).decode("gb2312") for a in range(0xB0, 0xD8) for b in range(0xA1, 0xFF)
                       if not (a == 0xD7 and b > 0xF9))
    raise CamelidError(f"unknown charset {name!r}: choose from {', '.join(CHARSETS)}")


def learn_merges(base_tokenizer, texts: Iterable[str], add: int, min_frequency: int = 2,
                 coverage: str = "") -> Extension:
    """Continue BPE training on top of `base_tokenizer` (a transformers fast tokenizer with a byte-level BPE
    model) until `add` new tokens exist or no pair occurs `min_frequency` times. Deterministic.

    Every character of the corpus's new-script words becomes one token first (most frequent first), then the
    characters of `coverage` (e.g. `charset("hangul")`) that the corpus lacks, so held-out text with rarer
    characters does not fall back to bytes; then ordinary BPE merges whole characters into syllables and words."""
    backend = base_tokenizer.backend_tokenizer
    spec = json.loads(backend.to_str())
    if spec["model"]["type"] != "BPE" or (spec.get("pre_tokenizer") or {}).get("type") not in ("ByteLevel", "Sequence"):
        raise CamelidError("vocabulary extension needs a byte-level BPE tokenizer (GPT-2 style tokenizer.json); "
                           f"this one is {spec['model']['type']}")
    vocab: dict[str, int] = spec["model"]["vocab"]
    counts: Counter[str] = Counter()
    for text in texts:
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(text):
            counts[word] += 1
    target = [(w, n) for w, n in sorted(counts.items()) if is_new_script_word(token_text(w))]
    if not target:
        raise CamelidError("the corpus has no words in a non-Latin script: nothing to add")
    words = [[t.value for t in backend.model.tokenize(w)] for w, _ in target]
    freqs = [n for _, n in target]
    # every character alone (it may start a line or follow a quote) and, where the script puts spaces
    # between words, after a space, at frequency 1: only phase 1 below ever merges these
    spaced = sum(n for w, n in target if w.startswith("Ġ")) >= 0.1 * sum(freqs)
    chars = {c for w, _ in target for c in token_text(w).lstrip(" ")}
    for c in sorted(chars | {c for c in coverage if is_new_script_word(c)}):
        for form in ([c, " " + c] if spaced else [c]):
            words.append([t.value for t in backend.model.tokenize("".join(_ENCODE[b] for b in form.encode()))])
            freqs.append(1)
    pair_count: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, (w, f) in enumerate(zip(words, freqs)):
        for p in zip(w, w[1:]):
            pair_count[p] += f
            where.setdefault(p, set()).add(i)
    state = _MergeState(words, freqs, pair_count, where, set(vocab), [], [])
    # phase 1, SentencePiece's character coverage: every character of the corpus becomes one token (with and
    # without its leading space), most frequent first; phase 2: ordinary BPE across characters.
    state.run(add, 1, within_char=True)
    state.run(add, min_frequency, within_char=False)
    return Extension(state.new_tokens, state.merges, len(target), sum(n for _, n in target))


def _within_char(pair: tuple[str, str]) -> bool:
    """True when the merged token holds bytes of at most one character (after an optional leading space)."""
    s = bytes(_BYTES[c] for c in pair[0] + pair[1])
    s = s[1:] if s[:1] == b" " else s
    leads = [i for i, x in enumerate(s) if not 0x80 <= x < 0xC0]
    return not leads or leads == [0]


@dataclass
class _MergeState:
    words: list[list[str]]
    freqs: list[int]
    pair_count: Counter
    where: dict
    known: set[str]
    new_tokens: list[str]
    merges: list[tuple[str, str]]

    def run(self, add: int, min_frequency: int, within_char: bool) -> None:
        ok = _within_char if within_char else (lambda p: True)
        heap = [(-c, p) for p, c in self.pair_count.items() if c > 0 and ok(p)]
        heapq.heapify(heap)
        while heap and len(self.new_tokens) < add:
            neg, pair = heapq.heappop(heap)
            if self.pair_count.get(pair, 0) != -neg:
                continue  # stale entry: the count changed since it was pushed
            if -neg < min_frequency:
                break
            for p in self.merge(pair):
                c = self.pair_count.get(p, 0)
                if c > 0 and ok(p):
                    heapq.heappush(heap, (-c, p))

    def merge(self, pair: tuple[str, str]) -> set[tuple[str, str]]:
        """Merge `pair` in every word; returns the pairs whose counts changed."""
        a, b = pair
        merged = a + b
        self.merges.append(pair)
        if merged not in self.known:
            self.known.add(merged)
            self.new_tokens.append(merged)
        changed: set[tuple[str, str]] = set()
        for i in sorted(self.where.pop(pair, ())):
            w, f = self.words[i], self.freqs[i]
            for p in zip(w, w[1:]):
                self.pair_count[p] -= f
                changed.add(p)
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            self.words[i] = out
            for p in zip(out, out[1:]):
                self.pair_count[p] += f
                changed.add(p)
                self.where.setdefault(p, set()).add(i)
        self.pair_count.pop(pair, None)
        for p in [p for p in changed if self.pair_count.get(p, 0) <= 0]:
            self.pair_count.pop(p, None)
        return changed


def apply_extension(base_tokenizer, ext: Extension):
    """A new `tokenizers.Tokenizer`: the base one with `ext`'s tokens appended (ids after every old id) and its
    merges appended (ranks after every old merge)."""
    from tokenizers import Tokenizer

    spec = json.loads(base_tokenizer.backend_tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    next_id = max([*vocab.values(), *(t["id"] for t in spec.get("added_tokens", []))]) + 1
    for tok in ext.tokens:
        vocab[tok] = next_id
        next_id += 1
    old = spec["model"]["merges"]
    as_lists = bool(old) and isinstance(old[0], list)
    spec["model"]["merges"] = old + [[a, b] if as_lists else f"{a} {b}" for a, b in ext.merges]
    return Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))


def extend_tokenizer(base: str, corpus: list[str | os.PathLike], add: int, out_dir: str | os.PathLike,
                     min_frequency: int = 2, coverage: str = ""):
    """Extend the tokenizer of model spec `base` with up to `add` tokens learned on the `corpus` files and save it
    (tokenizer files + vocab_extension.json) to `out_dir`, replacing what was there atomically per directory.
    Returns the saved transformers tokenizer."""
    from transformers import AutoTokenizer

    if add < 1:
        raise CamelidError(f"--add must be at least 1 (got {add})")
    if not corpus:
        raise CamelidError("no corpus files given")
    base_dir = tokenizer_dir(base)
    base_tok = AutoTokenizer.from_pretrained(base_dir)
    texts = [t for path in corpus for t in read_texts(path)]
    ext = learn_merges(base_tok, texts, add, min_frequency, coverage)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        base_tok.save_pretrained(tmp)
        (tmp / "tokenizer.json").write_text(apply_extension(base_tok, ext).to_str(pretty=False), encoding="utf-8")
        tok = AutoTokenizer.from_pretrained(tmp)
        write_json(tmp / EXTENSION_FILE, {
            "base": base, "base_vocab_size": len(base_tok), "vocab_size": len(tok), "min_frequency": min_frequency,
            "coverage_chars": len(coverage),
            "corpus": [{"path": str(p), "sha256": sha256_file(p)} for p in corpus], **ext.info()})
        out.mkdir(exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(out)


def token_stats(tokenizer, text: str) -> dict:
    """Tokens, characters (all, spaces included) and whitespace-separated words of `text`, and the ratios."""
    n = len(tokenizer(text, add_special_tokens=False).input_ids)
    chars, words = len(text), len(text.split())
    return {"tokens": n, "chars": chars, "words": words, "tokens_per_char": n / max(chars, 1),
            "tokens_per_word": n / max(words, 1)}


# ---------------------------------------------------------------------------------------------- model side


def ties_embeddings(model) -> bool:
    """True when the LM head shares its weight tensor with the input embeddings (SmolLM2, Gemma, ...)."""
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def base_pieces(tokenizer, base_tokenizer, start: int) -> dict[int, list[int]]:
    """For each new (non-special) id from `start`: the base tokenizer's ids for that token's text, the pieces the
    base model read it as. A token whose text is not whole UTF-8 characters is left out."""
    special = set(tokenizer.all_special_ids)
    out = {}
    for i in range(start, len(tokenizer)):
        text = tokenizer.decode([i], clean_up_tokenization_spaces=False)
        if i in special or not text or "\ufffd" in text:
            continue
        ids = base_tokenizer.encode(text, add_special_tokens=False)
        if ids and max(ids) < start:
            out[i] = ids
    return out


def resize_embeddings(model, tokenizer, pad_to_multiple_of: int | None = None, base_tokenizer=None) -> int:
    """Grow the input embeddings and LM head to the tokenizer's length, for both matrices unless they are tied.
    Returns the number of rows added (0 when the model is already large enough; it never shrinks).

    New rows start as the mean of the old rows (Stanford's `smart_tokenizer_and_embedding_resize`); with the
    `base_tokenizer` a new token's rows are instead the mean of the rows of the pieces the base tokenizer cuts its
    text into (Fast Vocabulary Transfer, Gee et al. 2022): `한국어` starts where the model's reading of its byte
    pieces is, not at one point shared by all 5,000 new tokens, which a head cannot tell apart."""
    import torch

    emb = model.get_input_embeddings()
    old = emb.weight.shape[0]
    want = len(tokenizer)
    if pad_to_multiple_of:
        want = -(-want // pad_to_multiple_of) * pad_to_multiple_of
    if want <= old:
        return 0
    tied = ties_embeddings(model)
    pieces = base_pieces(tokenizer, base_tokenizer, old) if base_tokenizer is not None else {}
    model.resize_token_embeddings(want, mean_resizing=False)
    head = model.get_output_embeddings()
    rows = [model.get_input_embeddings().weight]
    if head is not None and not tied:
        rows += [head.weight] + ([head.bias] if getattr(head, "bias", None) is not None else [])
    with torch.no_grad():
        for m in rows:  # a bias is rows of one value
            m[old:] = m[:old].mean(dim=0, keepdim=True)
            for i, ids in pieces.items():
                m[i] = m[ids].mean(dim=0)
    return want - old


def module_name(model, module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def lora_modules_to_save(model) -> list[str]:
    """Module names for peft's `modules_to_save` so the input embeddings and the LM head train fully next to LoRA.

    With tied weights only the embedding is listed: pass `ensure_weight_tying=True` to `LoraConfig` (see
    `lora_embedding_kwargs`) and peft ties the LM head to the trainable copy; listing both without it would train
    two diverging copies of one matrix and the LM head would keep the untrained mean rows for the new tokens."""
    names = [module_name(model, model.get_input_embeddings())]
    head = model.get_output_embeddings()
    if head is not None and not ties_embeddings(model):
        names.append(module_name(model, head))
    return names


def lora_embedding_kwargs(model) -> dict:
    """`LoraConfig` keyword arguments for training the (resized) embeddings and LM head fully with LoRA."""
    return {"modules_to_save": lora_modules_to_save(model), "ensure_weight_tying": ties_embeddings(model)}


def train_only_embeddings(model) -> int:
    """Freeze everything but the input embeddings and the LM head (one matrix when tied): Chinese-LLaMA's first
    stage, where the new rows learn their meaning on raw text while the rest of the model stays as it was.
    Returns the number of trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and not ties_embeddings(model):
        params.append(head.weight)
    for p in params:
        p.requires_grad_(True)
    return sum(p.numel() for p in params)
