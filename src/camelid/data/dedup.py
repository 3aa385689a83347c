"""Near-duplicate filtering by ROUGE-L F1: Stanford's decisions, exactly, and hundreds of times faster.

Stanford's generate_instruction.py keeps an instruction only when its ROUGE-L F1 (rouge_score, no stemmer)
against every seed and every instruction kept so far is <= 0.7, and stores its 10 most similar instructions
and the mean score. ROUGE-L F1 over token sequences is 2*LCS/(len_a+len_b): RapidFuzz's normalized Indel
similarity computes exactly that with bit-parallel C++, a whole block of candidates against the whole pool in
one `cdist` call. Wherever a decision or a stored score depends on the last bits, the LCS length is recovered
and the score recomputed with rouge_score's own precision/recall/fmeasure formula, so the decisions (`>`
threshold, ties included) and the top-10 scores are rouge_score's floats (see Deduper for the details).

Korean and Chinese are first-class: rouge_score deletes every non-ASCII character (all Korean pairs score 0),
so `lang="ko"` tokenizes into Kiwi morphemes and `lang="zh"` into single Han characters plus ASCII words.
"""

from __future__ import annotations

import json
import re
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Indel

from camelid.core.io import CamelidError, DataError, Problem, atomic_writes, read_records
from camelid.core.records import json_type
from camelid.data.lang import detect_language
from camelid.data.rouge_index import PrefixIndex

LANGS = ("en", "ko", "zh")
TOP_K = 10  # Stanford stores the 10 most similar instructions

# ------------------------------------------------------------------------------------------- tokenizers

# rouge_score.tokenize: lowercase, every run of [^a-z0-9] -> " ", split on spaces, keep tokens matching
# ^[a-z0-9]+$. After the substitution only [a-z0-9] runs remain, so findall on the lowered text is the same.
_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")
_ZH_TOKEN = re.compile(r"[a-z0-9]+|[^\x00-\x7f\W]")  # ASCII words, or any single non-ASCII letter/digit
# Kiwi tags dropped: punctuation, brackets, symbols, list bullets, emoji (SL/SN/SH/W_URL... are kept)
_KIWI_DROP = {"SF", "SP", "SS", "SSO", "SSC", "SE", "SO", "SW", "SB", "W_EMOJI"}

_kiwi = None
_kiwi_lock = threading.Lock()


def rouge_tokens(text: str) -> list[str]:
    """rouge_score's default tokenizer (no stemmer), token for token."""
    return _ROUGE_TOKEN.findall(text.lower())


def chinese_tokens(text: str) -> list[str]:
    """Each Han (or other non-ASCII letter) character is a token; ASCII words and numbers stay whole."""
    return _ZH_TOKEN.findall(text.lower())


def kiwi():
    """The Kiwi morphological analyser, loaded once (it takes a second or two)."""
    global _kiwi
    with _kiwi_lock:
        if _kiwi is None:
            try:
                from kiwipiepy import Kiwi
            except ImportError:
                raise CamelidError("Korean tokenization needs kiwipiepy: pip install 'camelid[lang]'") from None
            _kiwi = Kiwi()
    return _kiwi


def _kiwi_forms(tokens) -> list[str]:
    return [t.form.lower() for t in tokens if t.tag not in _KIWI_DROP]


def korean_tokens(text: str) -> list[str]:
    """Kiwi morphemes (forms, punctuation dropped): '요약하세요' and '요약해 주세요' share 요약/하/세요."""
    return _kiwi_forms(kiwi().tokenize(text))


def tokenize_many(texts: Sequence[str], lang: str) -> list[list[str]]:
    """Tokenize many texts for `lang` (Kiwi analyses Korean in one batch call)."""
    if lang == "en":
        return [rouge_tokens(t) for t in texts]
    if lang == "zh":
        return [chinese_tokens(t) for t in texts]
    if lang == "ko":
        if not texts:
            return []
        return [_kiwi_forms(toks) for toks in kiwi().tokenize(list(texts))]
    raise CamelidError(f"unknown language {lang!r}: use one of {', '.join(LANGS)} or auto")


def tokenizer(lang: str) -> Callable[[str], list[str]]:
    return {"en": rouge_tokens, "zh": chinese_tokens, "ko": korean_tokens}[check_lang(lang)]


def check_lang(lang: str) -> str:
    if lang not in LANGS:
        raise CamelidError(f"unknown language {lang!r}: use one of {', '.join(LANGS)} or auto")
    return lang


def detect_lang(texts: Iterable[str], sample: int = 2000) -> str:
    """The tokenization for the first `sample` texts: ko, zh (character tokens, also for Japanese) or en."""
    lang = detect_language("\n".join(t for _, t in zip(range(sample), texts)))
    return lang if lang in ("ko", "zh") else "zh" if lang == "ja" else "en"


# ------------------------------------------------------------------------------------------- scoring

NARROW = 254  # the similarity scan's one-byte alphabet: the 254 commonest tokens keep a byte of their own
QUERY_HOLE, POOL_HOLE = chr(254), chr(255)  # the other tokens: two different holes never match each other
MAX_IDS = 0x10FFFF - 0x800
_NONE = np.zeros(0, dtype=np.int64)
EPS = 1e-9  # RapidFuzz's 2*LCS/(a+b) and rouge_score's float differ by a few ulps: closer calls are redone exactly


def _full(ids: Sequence[int]) -> str:
    """One character per token id (skipping the surrogate range)."""
    return "".join([chr(i if i < 0xD800 else i + 0x800) for i in ids])


def rouge_f(lcs: np.ndarray, target_len: np.ndarray | int, pred_lens: np.ndarray) -> np.ndarray:
    """ROUGE-L F1 from LCS lengths with rouge_score's own formula, so the floats are bit-identical.

    rouge_scorer._score_lcs(target, prediction): precision = lcs/len(prediction), recall = lcs/len(target),
    fmeasure = 2*p*r/(p+r); 0 when either sequence is empty (or the LCS is 0)."""
    lcs = np.asarray(lcs, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = lcs / np.asarray(pred_lens, dtype=np.int64)
        r = lcs / np.asarray(target_len, dtype=np.int64)
        f = 2 * p * r / (p + r)
    return np.where(lcs == 0, 0.0, f)


@dataclass
class Verdict:
    """One candidate's outcome. `most_similar` and `avg` are filled for kept candidates (Stanford's fields)
    when the Deduper computes them; `score` is the highest similarity to the pool (rouge_score's float; 0.0
    for an empty pool), None for a kept candidate whose fields were not computed."""

    keep: bool
    score: float | None
    similar_to: str | None  # the instruction that scored highest
    most_similar: dict[str, float] = field(default_factory=dict)
    avg: float = 0.0

    def fields(self) -> dict:
        """Stanford's output fields for a kept instruction."""
        return {"most_similar_instructions": self.most_similar, "avg_similarity_score": self.avg}


class Deduper:
    """The pool Stanford compares against (seeds, then every kept instruction, in order) and the greedy filter.

    `offer(text)` is Stanford's per-instruction step: keep when the highest ROUGE-L F1 against the pool is
    <= threshold, and then add it; `offer_many(texts)` gives the same verdicts for a list. The decision never
    scans the pool: a PrefixIndex finds every pool entry that can score above the threshold and verifies it
    with the exact LCS, so a rejected candidate's score and `similar_to` are exact too.

    Stanford's fields of a kept instruction (`similarity=True`, the default) need its score against every
    earlier pool entry: the mean, and the 10 best. Those rows are scored a block of kept candidates at a
    time with one RapidFuzz cdist in a one-byte alphabet (RapidFuzz looks bytes up in a flat table, wider
    characters in a hash map): the 254 commonest tokens keep a byte, the others become holes that never
    match, and the pairs sharing such a rare token (an inverted index of rare tokens) are rescored with full
    codes, so every LCS is exact and every score rouge_score's float. The mean is np.mean over the same row
    Stanford averages. Among equally similar instructions the top 10 prefer the most recent one (Stanford's
    unstable np.argsort picks arbitrarily). `similarity=False` decides only, in time close to linear.

    Token ids are interned commonest first; as the pool outgrows the words it was ranked on (generation),
    the index's element order and the one-byte alphabet are recomputed from the pool."""

    def __init__(self, threshold: float = 0.7, lang: str = "en", top_k: int = TOP_K, workers: int = -1,
                 block: int = 256, similarity: bool = True):
        self.threshold = threshold
        self.lang = check_lang(lang)
        self.top_k = top_k
        self.workers = workers
        self.block = block
        self.similarity = similarity
        self.texts: list[str] = []  # Stanford's all_instructions
        self.index = PrefixIndex(threshold)
        self._ids: dict[str, int] = {}
        self._lock = threading.RLock()
        # the similarity scan: one-byte codes per token id, the pool in them, rare token id -> pool positions
        self._q8: list[str] = []
        self._p8: list[str] = []
        self._seqs8: list[str] = []
        self._rare: dict[int, array] = {}
        self._lens = np.zeros(1024, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.texts)

    # ---- interning: tokens -> ids; the most frequent get the smallest ids (and the one-byte codes)
    def intern(self, token_lists: Sequence[Sequence[str]]) -> list[list[int]]:
        """Give ids to new tokens, commonest first (call it with everything up front for the best speed);
        returns the id sequences."""
        new = Counter(t for toks in token_lists for t in toks if t not in self._ids)
        if len(self._ids) + len(new) > MAX_IDS:
            raise CamelidError("more than a million distinct tokens: too many to deduplicate in one pool")
        for tok, _ in new.most_common():
            i = len(self._ids)
            self._ids[tok] = i
            self._q8.append(chr(i) if i < NARROW else QUERY_HOLE)
            self._p8.append(chr(i) if i < NARROW else POOL_HOLE)
        ids = [[self._ids[t] for t in toks] for toks in token_lists]
        if self.index.intern(ids) and self.similarity:
            self._recode(ids)
        return ids

    def _recode(self, extra: Sequence[Sequence[int]]) -> None:
        """Give the one-byte codes to the pool's (and `extra`'s) commonest tokens; re-encode the pool."""
        pool = self.index.pool_ids()
        counts = Counter(t for ids in (*pool, *extra) for t in ids)
        self._q8 = [QUERY_HOLE] * len(self._ids)
        self._p8 = [POOL_HOLE] * len(self._ids)
        for code, (t, _) in enumerate(counts.most_common(NARROW)):
            self._q8[t] = self._p8[t] = chr(code)
        self._seqs8, self._rare = [], {}
        for pos, ids in enumerate(pool):
            self._append8(pos, ids)

    def _append8(self, pos: int, ids: Sequence[int]) -> None:
        p8 = self._p8
        s = "".join([p8[i] for i in ids])
        self._seqs8.append(s)
        if POOL_HOLE in s:
            for t in {t for t in ids if p8[t] == POOL_HOLE}:
                lst = self._rare.get(t)
                if lst is None:
                    self._rare[t] = array("l", (pos,))
                else:
                    lst.append(pos)

    def _append(self, text: str, ids: list[int], full: str, order: list[int] | None = None) -> int:
        pos = self.index.add(ids, full, order)
        self.texts.append(text)
        if self.similarity:
            self._append8(pos, ids)
            if pos >= len(self._lens):
                self._lens = np.concatenate([self._lens, np.zeros(len(self._lens), dtype=np.int64)])
            self._lens[pos] = len(ids)
        return pos

    # ---- the pool
    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        return tokenize_many(texts, self.lang)

    def add(self, texts: Sequence[str], tokens: Sequence[Sequence[str]] | None = None) -> None:
        """Put texts in the pool unchecked (seeds, or instructions kept by an earlier run)."""
        with self._lock:
            tokens = self.tokenize(texts) if tokens is None else tokens
            for text, ids in zip(texts, self.intern(tokens)):
                self._append(text, ids, _full(ids))

    def check(self, text: str, tokens: Sequence[str] | None = None) -> Verdict:
        """Decide `text` against the pool without adding it (the similarity fields are not computed)."""
        with self._lock:
            tokens = self.tokenize([text])[0] if tokens is None else tokens
            ids = self.intern([tokens])[0]
            hit = self.index.best_above(ids, _full(ids))
            return Verdict(True, None, None) if hit is None else Verdict(False, hit[0], self.texts[hit[1]])

    def offer(self, text: str, tokens: Sequence[str] | None = None) -> Verdict:
        """Stanford's step: score against the pool, and add `text` when it is kept."""
        return self.offer_many([text], None if tokens is None else [tokens])[0]

    def offer_many(self, texts: Sequence[str], tokens: Sequence[Sequence[str]] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> list[Verdict]:
        """`[offer(t) for t in texts]`: the same verdicts, the similarity fields scored a block at a time."""
        with self._lock:
            tokens = self.tokenize(texts) if tokens is None else tokens
            ids = self.intern(tokens)
            out: list[Verdict] = []
            for start in range(0, len(ids), self.block):
                out += self._offer_block(texts[start:start + self.block], ids[start:start + self.block])
                if progress:
                    progress(min(start + self.block, len(ids)), len(ids))
            return out

    def _offer_block(self, texts: Sequence[str], ids_list: list[list[int]]) -> list[Verdict]:
        verdicts: list[Verdict | None] = []
        kept: list[tuple[int, int, list[int], str]] = []  # block index, pool position, ids, full codes
        index = self.index
        for i, (text, ids) in enumerate(zip(texts, ids_list)):
            full, order = _full(ids), index.order(ids)
            hit = index.best_above(ids, full, order=order)
            if hit is not None:
                verdicts.append(Verdict(False, hit[0], self.texts[hit[1]]))
                continue
            verdicts.append(None)
            kept.append((i, self._append(text, ids, full, order), ids, full))
        if kept and self.similarity:
            for (i, *_), v in zip(kept, self._similar(kept)):
                verdicts[i] = v
        for i, *_ in kept:
            if verdicts[i] is None:
                verdicts[i] = Verdict(True, None, None)
        return verdicts  # type: ignore[return-value]

    def _similar(self, kept: list[tuple[int, int, list[int], str]]) -> list[Verdict]:
        """Stanford's fields for kept candidates, each against the pool before its own position: 2*LCS/(a+b) for
        the whole row (one cdist for the block), rouge_score's float recomputed for the top-k candidates. The
        mean sums each row in one pass, however the candidates were batched."""
        n = kept[-1][1]  # the last one is compared with everything before it
        if n == 0:
            return [Verdict(True, 0.0, None, {}, 0.0)]
        q8 = self._q8
        queries = ["".join([q8[t] for t in ids]) for _, _, ids, _ in kept]
        workers = self.workers if len(queries) * n > 100_000 else 1  # threads cost more than tiny calls
        sim = process.cdist(queries, self._seqs8[:n], scorer=Indel.normalized_similarity, dtype=np.float64,
                            workers=workers)
        seqs = self.index.seqs
        rows, cols = [], []  # the pairs sharing a rare token, rescored with full codes in one call
        for r, (_, pos, ids, full) in enumerate(kept):
            hits = [self._rare[t] for t in {t for t in ids if q8[t] == QUERY_HOLE} if t in self._rare]
            if hits:
                idx = np.unique(np.concatenate([np.frombuffer(h, dtype=f"i{h.itemsize}") for h in hits]))
                idx = idx[idx < pos]
                rows.append(np.full(len(idx), r))
                cols.append(idx)
        rows, cols = (np.concatenate(rows), np.concatenate(cols)) if rows else (_NONE, _NONE)
        if len(rows):
            sim[rows, cols] = process.cpdist([kept[r][3] for r in rows.tolist()], [seqs[j] for j in cols.tolist()],
                                             scorer=Indel.normalized_similarity, dtype=np.float64)
        for r, (_, pos, ids, full) in enumerate(kept):
            if not ids:
                sim[r] = 0.0  # rouge_score: 0 when either side is empty (RapidFuzz: 1.0 for two empties)
            sim[r, pos:] = 0.0  # entries pooled after this one
        sums = [sim[r, :pos].sum() for r, (_, pos, _, _) in enumerate(kept)]
        lens = self._lens[:n]
        k = self.top_k
        # the k-th best of a subset of a row bounds the row's k-th best from below: every column at or above the
        # subset's (minus EPS) is a top-k candidate, a few dozen per row found in one pass
        width = min(n, 2048)
        lower = np.partition(sim[:, n - width:], width - k, axis=1)[:, width - k] if width > k else np.zeros(len(sim))
        out = []
        for r, (_, pos, ids, _) in enumerate(kept):
            if pos == 0:
                out.append(Verdict(True, 0.0, None, {}, 0.0))
                continue
            b = len(ids)
            cand = np.arange(pos) if pos <= k else np.flatnonzero(sim[r, :pos] >= lower[r] - EPS)
            exact = rouge_f(np.rint(sim[r, cand] * (b + lens[cand]) / 2), b, lens[cand])
            order = cand[np.lexsort((cand, exact))[::-1][:k]]  # best first, the later one first among ties
            ex = dict(zip(cand.tolist(), exact.tolist()))
            # rouge_score returns the int 0 when either token list is empty: keep that in the JSON, like Stanford
            most = {self.texts[j]: 0 if (b == 0 or lens[j] == 0) else ex[j] for j in order.tolist()}
            out.append(Verdict(True, ex[int(order[0])], self.texts[order[0]], most, float(sums[r] / pos)))
        return out


# ------------------------------------------------------------------------------------------- datasets


@dataclass
class DedupReport:
    kept: int
    rejected: int
    lang: str
    seconds: float
    output: Path
    rejected_path: Path | None


def check_threshold(threshold: float) -> float:
    """ROUGE-L F1 lies in [0, 1]: a threshold outside (0, 1] would reject everything or nothing."""
    if not 0 < threshold <= 1:
        raise CamelidError(f"--threshold {threshold}: expected a ROUGE-L F1 above 0 and at most 1 (Stanford: 0.7)")
    return threshold


def rejected_path(out: str | Path) -> Path:
    """`data.jsonl` -> `data.rejected.jsonl`: the sidecar of rejected records (read by `camelid data stats`)."""
    return Path(out).with_suffix(".rejected.jsonl")


def _texts(path: Path, key: str) -> tuple[list[dict], list[str]]:
    records, texts, problems = [], [], []
    for line, idx, rec in read_records(path):
        where = (str(path), line, key)
        if not isinstance(rec, dict):
            problems.append(Problem(str(path), line, None, f"expected an object, got {json_type(rec)}",
                                    record=idx))
        elif not isinstance(rec.get(key), str):
            msg = "missing" if key not in rec else f"expected a string, got {json_type(rec[key])}"
            problems.append(Problem(*where, msg, record=idx))
        else:
            records.append(rec)
            texts.append(rec[key])
        if len(problems) >= 20:
            break
    if problems:
        raise DataError(problems)
    return records, texts


def dedup_file(path: str | Path, out: str | Path, threshold: float = 0.7, lang: str = "auto",
               seeds: Sequence[str | Path] = (), key: str = "instruction", write_rejected: bool = True,
               progress: Callable[[int, int], None] | None = None, similarity: bool = True) -> DedupReport:
    """Greedy near-duplicate filter over a JSON/JSONL dataset, in file order (Stanford's loop).

    Records whose `key` scores ROUGE-L F1 > threshold against a seed (seed task files, compared but not
    written) or an earlier kept record are dropped; kept records get `most_similar_instructions` and
    `avg_similarity_score` (unless `similarity=False`: those need every kept record scored against every
    earlier one, while the decisions alone take close to linear time). The output is written atomically
    (.json: a JSON list, else JSONL)."""
    t0 = time.perf_counter()
    check_threshold(threshold)
    path, out = Path(path), Path(out)
    records, texts = _texts(path, key)
    seed_texts: list[str] = []
    for s in seeds:
        seed_texts += _texts(Path(s), "instruction")[1]
    lang = detect_lang(seed_texts + texts) if lang == "auto" else check_lang(lang)
    dd = Deduper(threshold, lang, similarity=similarity)
    seed_tokens, tokens = dd.tokenize(seed_texts), dd.tokenize(texts)
    dd.intern(seed_tokens + tokens)  # one frequency order for all: the commonest tokens get the fast codes
    dd.add(seed_texts, seed_tokens)
    verdicts = dd.offer_many(texts, tokens, progress=progress)
    kept = [{**rec, **v.fields()} if similarity else rec for rec, v in zip(records, verdicts) if v.keep]
    rej_path = rejected_path(out) if write_rejected else None
    # the output and its sidecar are written as a pair: both complete, or neither replaced
    with atomic_writes([out] + ([rej_path] if rej_path else [])) as files:
        if out.suffix == ".json":
            json.dump(kept, files[0], ensure_ascii=False, indent=4)
            files[0].write("\n")
        else:
            files[0].writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in kept)
        if rej_path:
            files[1].writelines(json.dumps({**rec, "reason": "near_duplicate", "similar_to": v.similar_to,
                                            "similarity": v.score}, ensure_ascii=False) + "\n"
                                for rec, v in zip(records, verdicts) if not v.keep)
    return DedupReport(len(kept), len(records) - len(kept), lang, time.perf_counter() - t0, out, rej_path)
