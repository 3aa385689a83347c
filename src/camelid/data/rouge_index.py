"""Every pool entry whose ROUGE-L F1 with a query is above a threshold, without scanning the pool.

ROUGE-L F1 of token sequences x (a tokens) and y (b tokens) is 2*LCS/(a+b), and the LCS is at most O, the
size of their multiset intersection. So F1 > t needs O >= t*(a+b)/2; as b >= O, O >= t*a/(2-t) (and the
same for b), which also bounds b between t*a/(2-t) and a*(2-t)/t. Seen as sets of (token, occurrence)
elements sorted in one global order, two sequences sharing at least `alpha` elements share one among the
first len-alpha+1 of each: the prefix filter of AllPairs/PPJoin (Bayardo et al. 2007, Xiao et al. 2008).
The index lists each pool entry under the elements of its prefix; a query looks up its own prefix, and
every entry found is verified with the exact LCS (RapidFuzz's bit-parallel Indel distance) and scored with
rouge_score's formula. The order puts rare elements first, so the lists looked up are short.

Nothing above the threshold is missed: the bounds use t lowered by 1e-9, below any rounding of the
score, and the verification is exact. The element order only affects speed; `rerank` rebuilds the lists
when the pool's vocabulary has drifted from the order (generation meets new words as it goes).
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from typing import Sequence

from rapidfuzz.distance import Indel

SHIFT = 21  # token ids stay below 2**21; the k-th repeat of token t is the element t + (k << SHIFT)
SLACK = 1e-9


def elements(ids: Sequence[int]) -> list[int]:
    """A token sequence as a set: each occurrence of a repeated token is its own element."""
    if len(set(ids)) == len(ids):
        return list(ids)
    seen: dict[int, int] = {}
    out = []
    for t in ids:
        k = seen.get(t, 0)
        seen[t] = k + 1
        out.append(t + (k << SHIFT))
    return out


def rouge_f1(lcs: int, target_len: int, pred_len: int) -> float:
    """rouge_score's _score_lcs fmeasure, same float operations (0 when the LCS is 0)."""
    if lcs == 0:
        return 0.0
    p, r = lcs / pred_len, lcs / target_len
    return 2 * p * r / (p + r)


class PrefixIndex:
    """The pool (appended in order) and the inverted index of its prefixes, for one threshold."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        t = max(threshold - SLACK, SLACK)
        self._lo = t / (2 - t)  # a partner of an n-token sequence has >= n*lo tokens in common, and >= n*lo tokens
        self._hi = (2 - t) / t  # ... and at most n*hi tokens
        self._rank: dict[int, int] = {}  # element -> rank; higher is rarer (looked up first)
        self._lists: dict[int, array] = {}  # element -> pool positions whose prefix holds it
        self.seqs: list[str] = []  # one character per token id (RapidFuzz compares them)
        self.lens = array("l")
        self._ranked_pool = 0  # pool size at the last full ranking

    def __len__(self) -> int:
        return len(self.seqs)

    # ---- element order
    def intern(self, id_lists: Sequence[Sequence[int]]) -> bool:
        """Rank unseen elements, commonest first; returns True when the whole index was re-ranked.

        A batch at least as large as the pool re-ranks everything; so does a pool that has doubled since
        the last full ranking while elements kept arriving a few at a time (generation's new words)."""
        new = Counter(e for ids in id_lists for e in elements(ids) if e not in self._rank)
        if not new:
            return False
        if self.seqs and (len(id_lists) >= len(self.seqs) or len(self.seqs) >= 2 * max(self._ranked_pool, 256)):
            self.rerank(id_lists)
            return True
        base = len(self._rank)
        for i, (e, _) in enumerate(new.most_common()):
            self._rank[e] = base + i
        if not self.seqs:
            self._ranked_pool = 0
        return False

    def rerank(self, extra: Sequence[Sequence[int]] = ()) -> None:
        """Rank every element by its frequency in the pool (and `extra`), and rebuild the lists."""
        pool = self.pool_ids()
        counts = Counter(e for ids in (*pool, *extra) for e in elements(ids))
        self._rank = {e: i for i, (e, _) in enumerate(counts.most_common())}
        self._lists = {}
        for pos, ids in enumerate(pool):
            self._index(pos, ids)
        self._ranked_pool = len(pool)

    def pool_ids(self) -> list[list[int]]:
        """The pool's token id sequences (decoded from their one-character-per-id strings)."""
        return [[_id(c) for c in s] for s in self.seqs]

    # ---- the pool
    def _min_overlap(self, n: int) -> int:
        return max(1, math.ceil(n * self._lo - SLACK))

    def _prefix(self, ids: Sequence[int]) -> list[int]:
        n = len(ids)
        keep = n - self._min_overlap(n) + 1
        rank = self._rank
        return sorted(elements(ids), key=rank.__getitem__, reverse=True)[:keep]

    def _index(self, pos: int, ids: Sequence[int]) -> None:
        if not ids:
            return  # an empty sequence scores 0 against everything
        lists = self._lists
        for e in self._prefix(ids):
            lst = lists.get(e)
            if lst is None:
                lists[e] = array("l", (pos,))
            else:
                lst.append(pos)

    def add(self, ids: Sequence[int], seq: str) -> int:
        """Append to the pool; returns its position."""
        pos = len(self.seqs)
        self.seqs.append(seq)
        self.lens.append(len(ids))
        self._index(pos, ids)
        return pos

    def best_above(self, ids: Sequence[int], seq: str, limit: int | None = None) -> tuple[float, int] | None:
        """The highest F1 above the threshold among the first `limit` pool entries (default: all), as
        (score, earliest position holding it); None when no entry is above the threshold."""
        a = len(ids)
        if a == 0:
            return None
        limit = len(self.seqs) if limit is None else limit
        lists = self._lists
        found: set[int] = set()
        for e in self._prefix(ids):
            lst = lists.get(e)
            if lst is not None:
                found.update(lst)
        if not found:
            return None
        lo, hi = self._min_overlap(a), math.floor(a * self._hi + SLACK)
        lens, seqs, thr = self.lens, self.seqs, self.threshold
        best, best_pos = thr, -1
        dist = Indel.distance
        for pos in found:
            if pos >= limit:
                continue
            b = lens[pos]
            if b < lo or b > hi:
                continue
            f = rouge_f1((a + b - dist(seq, seqs[pos])) // 2, a, b)
            if f > best or (f == best and best_pos >= 0 and pos < best_pos):
                best, best_pos = f, pos
        return (best, best_pos) if best_pos >= 0 else None


def _id(c: str) -> int:
    """Inverse of the one-character-per-token-id encoding (which skips the surrogate range)."""
    i = ord(c)
    return i - 0x800 if i >= 0xE000 else i
