"""The previous Deduper (camelid before issue 23, commit c4ac4dd), kept verbatim as the reference the
indexed filter must equal: it scores every candidate against the whole pool (RapidFuzz cdist, one-byte
alphabet, rare-token rescoring) and was checked against rouge_score and Stanford's loop. Quadratic."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from camelid.core.io import CamelidError
from camelid.data.dedup import TOP_K, check_lang, tokenize_many


EPS = 1e-9  # RapidFuzz's 2*LCS/(a+b) and rouge_score's float differ by a few ulps; closer calls are redone exactly


NARROW = 254  # token ids below this keep their own byte in the one-byte alphabet
QUERY_HOLE, POOL_HOLE = chr(254), chr(255)  # rare tokens: two different holes never match each other
MAX_IDS = 0x10FFFF - 0x800


def _full(ids: list[int]) -> str:
    """One character per token id (skipping the surrogate range)."""
    return "".join([chr(i if i < 0xD800 else i + 0x800) for i in ids])


def _narrow(ids: list[int], hole: str) -> str:
    return "".join([chr(i) if i < NARROW else hole for i in ids])


def rouge_f(lcs: np.ndarray, target_len: int, pred_lens: np.ndarray) -> np.ndarray:
    """ROUGE-L F1 from LCS lengths with rouge_score's own formula, so the floats are bit-identical.

    rouge_scorer._score_lcs(target, prediction): precision = lcs/len(prediction), recall = lcs/len(target),
    fmeasure = 2*p*r/(p+r); 0 when either sequence is empty (or the LCS is 0)."""
    lcs = np.asarray(lcs, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = lcs / np.asarray(pred_lens, dtype=np.int64)
        r = lcs / target_len if target_len else np.zeros(lcs.shape)
        f = 2 * p * r / (p + r)
    return np.where(lcs == 0, 0.0, f)


def _lcs_from_sim(sim: np.ndarray, a: np.ndarray, b: int) -> np.ndarray:
    """Recover LCS lengths from 2*LCS/(a+b) (exact: the float error is far below 0.5)."""
    return np.rint(sim * (a + b) / 2).astype(np.int64)


@dataclass
class Verdict:
    """One candidate's outcome. `most_similar` and `avg` are filled for kept candidates (Stanford's fields)."""

    keep: bool
    score: float  # the highest similarity to the pool, as rouge_score computes it (0.0 for an empty pool)
    similar_to: str | None  # the instruction that scored highest
    most_similar: dict[str, float] = field(default_factory=dict)
    avg: float = 0.0

    def fields(self) -> dict:
        """Stanford's output fields for a kept instruction."""
        return {"most_similar_instructions": self.most_similar, "avg_similarity_score": self.avg}


class Deduper:
    """The pool Stanford compares against (seeds, then every kept instruction, in order) and the greedy filter.

    `offer(text)` is Stanford's per-instruction step: score against the whole pool, keep when the best score is
    <= threshold, and then add it. `offer_many(texts)` gives the same verdicts for a list, a block at a time:
    one RapidFuzz cdist call scores the block against the pool, and the block's own pairwise matrix resolves
    the greedy order inside it.

    Speed: tokens are interned to integer ids by frequency. The pool is scored in a one-byte alphabet (RapidFuzz
    looks bytes up in a flat table, wider characters in a hash map: about twice as slow): the 254 commonest
    tokens keep their own byte, every other token becomes a "hole" that never matches (one hole byte for
    candidates, another for the pool). That LCS is exact unless a pair shares a rare token; those few pairs
    (found through an inverted index of rare tokens) are rescored with full codes.

    Exactness: every decision and every stored score is rouge_score's float (recomputed from the LCS length
    with its formula wherever the fast score is within 1e-9 of the threshold or of a top-10 boundary).
    `avg_similarity_score` is summed in a different order than np.mean, so it can differ in the last ulp or
    two. Among equally similar instructions the top 10 prefer the most recent one (Stanford's unstable
    np.argsort picks arbitrarily)."""

    def __init__(self, threshold: float = 0.7, lang: str = "en", top_k: int = TOP_K, workers: int = -1,
                 block: int = 256):
        self.threshold = threshold
        self.lang = check_lang(lang)
        self.top_k = top_k
        self.workers = workers
        self.block = block
        self.texts: list[str] = []  # Stanford's all_instructions
        self._seqs: list[str] = []  # token sequences, one character per token id
        self._seqs8: list[str] = []  # the same in the one-byte alphabet, rare tokens -> POOL_HOLE
        self._rare: dict[int, list[int]] = {}  # rare token id -> pool positions holding it
        self._lens: list[int] = []
        self._lens_arr = np.zeros(0, dtype=np.int64)
        self._ids: dict[str, int] = {}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self.texts)

    # ---- interning: tokens -> ids; the most frequent get the smallest ids (and the one-byte codes)
    def intern(self, token_lists: Sequence[Sequence[str]]) -> None:
        """Give ids to new tokens, commonest first (call it with everything up front for the best speed)."""
        new = Counter(t for toks in token_lists for t in toks if t not in self._ids)
        if len(self._ids) + len(new) > MAX_IDS:
            raise CamelidError("more than a million distinct tokens: too many to deduplicate in one pool")
        for tok, _ in new.most_common():
            self._ids[tok] = len(self._ids)

    def _encode(self, tokens: Sequence[str]) -> list[int]:
        return [self._ids[t] for t in tokens]

    def _append(self, text: str, ids: list[int], full: str) -> None:
        pos = len(self.texts)
        self.texts.append(text)
        self._seqs.append(full)
        self._seqs8.append(_narrow(ids, POOL_HOLE))
        self._lens.append(len(ids))
        for t in set(ids):
            if t >= NARROW:
                self._rare.setdefault(t, []).append(pos)

    def _pool_lens(self) -> np.ndarray:
        if len(self._lens_arr) != len(self._lens):
            self._lens_arr = np.asarray(self._lens, dtype=np.int64)
        return self._lens_arr

    def _sim(self, queries: list[str], choices: list[str]) -> np.ndarray:
        """2*LCS/(a+b) for every pair (RapidFuzz's normalized Indel similarity)."""
        from rapidfuzz import process
        from rapidfuzz.distance import Indel

        if not queries or not choices:
            return np.zeros((len(queries), len(choices)))
        workers = self.workers if len(queries) * len(choices) > 100_000 else 1  # threads cost more than tiny calls
        return process.cdist(queries, choices, scorer=Indel.normalized_similarity, dtype=np.float64,
                             workers=workers)

    # ---- the pool
    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        return tokenize_many(texts, self.lang)

    def add(self, texts: Sequence[str], tokens: Sequence[Sequence[str]] | None = None) -> None:
        """Put texts in the pool unchecked (seeds, or instructions kept by an earlier run)."""
        with self._lock:
            tokens = self.tokenize(texts) if tokens is None else tokens
            self.intern(tokens)
            for text, toks in zip(texts, tokens):
                ids = self._encode(toks)
                self._append(text, ids, _full(ids))

    def check(self, text: str, tokens: Sequence[str] | None = None) -> Verdict:
        """Score `text` against the pool without adding it."""
        with self._lock:
            tokens = self.tokenize([text])[0] if tokens is None else tokens
            self.intern([tokens])
            return self._offer_block([text], [self._encode(tokens)], add=False)[0]

    def offer(self, text: str, tokens: Sequence[str] | None = None) -> Verdict:
        """Stanford's step: score against the pool, and add `text` when it is kept."""
        return self.offer_many([text], None if tokens is None else [tokens])[0]

    def offer_many(self, texts: Sequence[str], tokens: Sequence[Sequence[str]] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> list[Verdict]:
        """`[offer(t) for t in texts]`: the same verdicts, scored a block at a time."""
        with self._lock:
            tokens = self.tokenize(texts) if tokens is None else tokens
            self.intern(tokens)
            ids = [self._encode(t) for t in tokens]
            out: list[Verdict] = []
            for start in range(0, len(ids), self.block):
                out += self._offer_block(texts[start:start + self.block], ids[start:start + self.block])
                if progress:
                    progress(min(start + self.block, len(ids)), len(ids))
            return out

    def _score_pool(self, ids_list: list[list[int]], seqs: list[str]) -> np.ndarray:
        """candidates x pool similarities: one-byte alphabet, then pairs sharing a rare token rescored."""
        sim = self._sim([_narrow(ids, QUERY_HOLE) for ids in ids_list], self._seqs8)
        for i, ids in enumerate(ids_list):
            hits = [self._rare[t] for t in {t for t in ids if t >= NARROW} if t in self._rare]
            if hits:
                idx = sorted(set().union(*hits)) if len(hits) > 1 else hits[0]
                sim[i, idx] = self._sim([seqs[i]], [self._seqs[j] for j in idx])[0]
        return sim

    def _offer_block(self, texts: Sequence[str], ids_list: list[list[int]], add: bool = True) -> list[Verdict]:
        n_pool, thr = len(self._seqs), self.threshold
        pool_lens = self._pool_lens()
        seqs = [_full(ids) for ids in ids_list]
        blens = np.asarray([len(s) for s in seqs], dtype=np.int64)
        sim = self._score_pool(ids_list, seqs)  # candidates x pool
        inner = self._sim(seqs, seqs)  # candidates x candidates
        sim[blens == 0] = 0.0  # rouge_score: 0 when either side is empty (RapidFuzz: 1.0 for two empties)
        inner[blens == 0] = 0.0
        inner[:, blens == 0] = 0.0
        best_pool = sim.max(axis=1) if n_pool else np.full(len(seqs), -1.0)
        sums = sim.sum(axis=1)
        top = self._top_candidates(sim)
        kept: list[int] = []  # block positions kept so far, in order
        verdicts = []
        for i, seq in enumerate(seqs):
            b = len(seq)
            ks = np.asarray(kept, dtype=np.int64)
            best = max(best_pool[i], inner[i, ks].max() if kept else -1.0)
            if best >= thr - EPS:  # a close call or a clear reject: score the nearest ones exactly
                near = np.flatnonzero(sim[i] >= min(best, thr) - EPS)
                near_k = ks[inner[i, ks] >= min(best, thr) - EPS] if kept else ks
                f = rouge_f(_lcs_from_sim(sim[i, near], pool_lens[near], b), b, pool_lens[near])
                f_k = rouge_f(_lcs_from_sim(inner[i, near_k], blens[near_k], b), b, blens[near_k])
                exact = np.concatenate([f, f_k])
                if len(exact) and exact.max() > thr:
                    j = int(np.argmax(exact))
                    name = self.texts[near[j]] if j < len(near) else texts[near_k[j - len(near)]]
                    verdicts.append(Verdict(False, float(exact[j]), name))
                    continue
            verdicts.append(self._kept_verdict(sim[i], top(i), sums[i], inner[i, ks], ks, b, pool_lens, blens,
                                               texts))
            kept.append(i)
        if add:
            for i in kept:
                self._append(texts[i], ids_list[i], seqs[i])
        return verdicts

    def _top_candidates(self, sim: np.ndarray) -> Callable[[int], np.ndarray]:
        """For each row, pool positions that hold its k best scores and everything tied with them.

        The k-th best of a subset of a row is a lower bound of the row's k-th best, so every column at or
        above the subset's k-th best (minus EPS) is a candidate: a few dozen, found in one pass."""
        n_pool, k = sim.shape[1], self.top_k
        if n_pool <= k:
            return lambda i: np.arange(n_pool)
        width = min(n_pool, 2048)
        lower = np.partition(sim[:, n_pool - width:], width - k, axis=1)[:, width - k]
        mask = sim >= (lower - EPS)[:, None]
        return lambda i: np.flatnonzero(mask[i])

    def _kept_verdict(self, row: np.ndarray, cand: np.ndarray, row_sum: float, inner: np.ndarray,
                      ks: np.ndarray, b: int, pool_lens: np.ndarray, blens: np.ndarray,
                      texts: Sequence[str]) -> Verdict:
        """Top-k (exact scores) among the candidates and the block's earlier kept ones; mean over all."""
        total = len(row) + len(ks)
        if total == 0:  # nothing to compare with
            return Verdict(True, 0.0, None, {}, 0.0)
        k = self.top_k
        lens = np.concatenate([pool_lens[cand], blens[ks]])
        sims = np.concatenate([row[cand], inner])
        exact = rouge_f(_lcs_from_sim(sims, lens, b), b, lens)
        order = np.lexsort((np.arange(len(exact)), exact))[::-1][:k]  # best first, later index first on ties
        # rouge_score returns the int 0 when either token list is empty: keep that in the JSON, like Stanford
        most = {}
        for j in order:
            name = self.texts[cand[j]] if j < len(cand) else texts[ks[j - len(cand)]]
            most[name] = 0 if (b == 0 or lens[j] == 0) else float(exact[j])
        best = float(exact[order[0]])
        similar_to = next(iter(most))
        avg = float((row_sum + inner.sum()) / total)
        return Verdict(True, best, similar_to, most, avg)


