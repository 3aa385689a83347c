"""Every pool entry whose ROUGE-L F1 with a query is above a threshold, without scanning the pool.

ROUGE-L F1 of token sequences x (a tokens) and y (b tokens) is 2*LCS/(a+b), and the LCS is at most O, the
size of their multiset intersection, so F1 > t needs O >= alpha(a, b) = t*(a+b)/2. Seen as sets of (token,
occurrence) elements sorted in one global order (rarest first), two sequences sharing alpha elements share
one among the first len-alpha+1 of each: the prefix filter of AllPairs/PPJoin (Bayardo et al. 2007, Xiao et
al. 2008). The pool is indexed twice, under each entry's short prefix (b - t*b + 1 elements: enough against a
query at least as long, as alpha >= t*b then) and its long prefix (b - t*b/(2-t) + 1: enough against any
partner, as b >= O gives alpha >= t*b/(2-t)). A query of a tokens looks its long prefix up in the short-prefix
lists for entries no longer than itself and its short prefix up in the long-prefix lists for longer ones, so
common words (last in the order) are looked up only where they are rare. PPJoin's positional filter drops an
entry when the first shared element, at positions i and j, leaves too few elements after it
(1 + min(a-i-1, b-j-1) < alpha); the length filter keeps b within t*a/(2-t) and a*(2-t)/t. Every entry left
is verified with the exact LCS (RapidFuzz's bit-parallel Indel distance) and scored with rouge_score's formula.

Nothing above the threshold is missed: the bounds use t lowered by 1e-9, below any rounding of the score,
and the verification is exact. The element order only affects speed; the index re-ranks itself when the
pool's vocabulary has drifted from the order (generation meets new words as it goes).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from typing import Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Indel

SHIFT = 21  # token ids stay below 2**21; the k-th repeat of token t is the element t + (k << SHIFT)
SLACK = 1e-9
POS_MASK = (1 << 24) - 1  # list entries pack (length << 40 | position in the prefix << 24 | pool position)
MAX_LEN = (1 << 23) - 1
_NONE = np.zeros(0, dtype=np.int64)


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
    """The pool (appended in order) and the inverted lists of its prefixes, for one threshold."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self._t = t = max(threshold - SLACK, SLACK)
        self._lo = t / (2 - t)  # a partner of an n-token sequence shares >= n*lo tokens with it
        self._hi = (2 - t) / t  # ... and has at most n*hi tokens
        self._rank: dict[int, int] = {}  # element -> rank; higher is rarer (looked up first)
        self._short: dict[int, array] = {}  # element -> codes of the entries holding it in their short prefix
        self._long: dict[int, array] = {}  # the same for the long prefixes
        self.seqs: list[str] = []  # one character per token id (RapidFuzz compares them)
        self.lens = array("q")
        self.sigs = array("Q")  # a 64-bit signature of each entry's elements
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
        self._short, self._long = {}, {}
        for pos, ids in enumerate(pool):
            self._index(pos, len(ids), self.order(ids))
        self._ranked_pool = len(pool)

    def pool_ids(self) -> list[list[int]]:
        """The pool's token id sequences (decoded from their one-character-per-id strings)."""
        return [[_id(c) for c in s] for s in self.seqs]

    # ---- the pool
    def _short_len(self, n: int) -> int:
        return n - max(1, math.ceil(n * self._t - SLACK)) + 1

    def _long_len(self, n: int) -> int:
        return n - max(1, math.ceil(n * self._lo - SLACK)) + 1

    def order(self, ids: Sequence[int]) -> list[int]:
        """The sequence's elements, rarest first (what the prefixes are cut from)."""
        return sorted(elements(ids), key=self._rank.__getitem__, reverse=True)

    def _index(self, pos: int, b: int, order: list[int]) -> None:
        if not b:
            return  # an empty sequence scores 0 against everything
        if pos > POS_MASK or b > MAX_LEN:
            raise ValueError(f"the index holds {POS_MASK + 1:,} entries of {MAX_LEN:,} tokens at most")
        for lists, n in ((self._short, self._short_len(b)), (self._long, self._long_len(b))):
            for j, e in enumerate(order[:n]):
                # sorted by (length, position in the prefix): a query slices the lengths it can match
                code = b << 40 | min(j, 0xFFFF) << 24 | pos  # a j capped lower only loosens the bound
                lst = lists.get(e)
                if lst is None:
                    lists[e] = array("q", (code,))
                elif code > lst[-1]:
                    lst.append(code)
                else:
                    lst.insert(bisect_right(lst, code), code)

    def add(self, ids: Sequence[int], seq: str, order: list[int] | None = None) -> int:
        """Append to the pool; returns its position."""
        pos = len(self.seqs)
        order = self.order(ids) if order is None else order
        self._index(pos, len(ids), order)
        self.seqs.append(seq)
        self.lens.append(len(ids))
        sig = 0
        for e in order:
            sig |= 1 << _bit(e)
        self.sigs.append(sig)
        return pos

    def candidates(self, a: int, order: list[int], limit: int | None = None) -> np.ndarray:
        """Pool positions (below `limit`, ascending) that pass the filters with a query of `a` tokens whose
        elements are `order`: a superset of those scoring above the threshold."""
        if a == 0 or not self.seqs:
            return _NONE
        t, half = self._t, self._t / 2
        lo, hi = max(1, math.ceil(a * self._lo - SLACK)), math.floor(a * self._hi + SLACK)
        buf = array("q")
        # entries no longer than the query under their short prefixes; longer ones under their long prefixes
        for lists, n, b_lo, b_hi in ((self._short, self._long_len(a), lo, a), (self._long, self._short_len(a), a + 1, hi)):
            for i, e in enumerate(order[:n]):
                # PPJoin's positional filter on the query side: the overlap is at most a - i, so alpha(a, b) <= a - i
                # caps b; the lists are sorted by length, so only that slice is read
                b_max = min(b_hi, math.floor(2 * (a - i) / t - a) + 1)
                while b_max >= b_lo and math.ceil((a + b_max) * half - SLACK) > a - i:
                    b_max -= 1
                if b_max < b_lo:
                    break
                lst = lists.get(e)
                if lst is None:
                    continue
                start = bisect_left(lst, b_lo << 40)
                end = bisect_left(lst, (b_max + 1) << 40, start)
                if end > start:
                    buf.extend(lst[start:end])
        if not buf:
            return _NONE
        codes = np.frombuffer(buf, dtype=np.int64)
        b = codes >> 40
        # the same filter on the entry's side, at the first shared element (j in the entry): a later shared element
        # only gives a smaller bound
        keep = b - ((codes >> 24) & 0xFFFF) >= np.ceil((a + b) * half - SLACK)
        pos = codes[keep] & POS_MASK
        if limit is not None:
            pos = pos[pos < limit]
        pos = np.unique(pos)
        if len(pos) > 4:
            # signature filter: an element of the query whose bit is unset in an entry's signature is not in the
            # entry, so the overlap is at most the number of query elements on the entry's bits
            counts = Counter([((e * _GOLDEN) & _U64) >> 58 for e in order])
            sig = np.frombuffer(self.sigs, dtype=np.uint64)[pos]
            bound = np.zeros(len(pos), dtype=np.int64)
            for k in range(1, max(counts.values()) + 1):
                mask = sum(1 << bit for bit, c in counts.items() if c >= k)
                bound += _popcount(sig & np.uint64(mask))
            pos = pos[bound >= np.ceil((a + np.frombuffer(self.lens, dtype=np.int64)[pos]) * half - SLACK)]
        return pos

    def best_above(self, ids: Sequence[int], seq: str, limit: int | None = None,
                   order: list[int] | None = None) -> tuple[float, int] | None:
        """The highest F1 above the threshold among the first `limit` pool entries (default: all), as
        (score, earliest position holding it); None when no entry is above the threshold."""
        cands = self.candidates(len(ids), self.order(ids) if order is None else order, limit)
        if not len(cands):
            return None
        a, seqs, lens = len(ids), self.seqs, self.lens
        if len(cands) <= 8:
            best, best_pos = self.threshold, -1
            for pos in cands.tolist():
                b = lens[pos]
                f = rouge_f1((a + b - Indel.distance(seq, seqs[pos])) // 2, a, b)
                if f > best:  # ascending positions: the earliest wins a tie
                    best, best_pos = f, pos
            return (best, best_pos) if best_pos >= 0 else None
        d = process.cdist([seq], [seqs[c] for c in cands.tolist()], scorer=Indel.distance, dtype=np.int64)[0]
        b = np.frombuffer(lens, dtype=np.int64)[cands]
        lcs = (a + b - d) // 2
        with np.errstate(divide="ignore", invalid="ignore"):
            p, r = lcs / b, lcs / a
            f = np.where(lcs == 0, 0.0, 2 * p * r / (p + r))  # rouge_score's operations, in its order
        j = int(np.argmax(f))  # the first of the highest
        return (float(f[j]), int(cands[j])) if f[j] > self.threshold else None


_GOLDEN, _U64 = 0x9E3779B97F4A7C15, 0xFFFFFFFFFFFFFFFF


def _bit(e: int) -> int:
    """Which of 64 signature bits an element sets (Fibonacci hashing)."""
    return ((e * _GOLDEN) & _U64) >> 58


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x).astype(np.int64)
    return _BYTE_BITS[x.view(np.uint8)].reshape(-1, 8).sum(axis=1)


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def _id(c: str) -> int:
    """Inverse of the one-character-per-token-id encoding (which skips the surrogate range)."""
    i = ord(c)
    return i - 0x800 if i >= 0xE000 else i
