"""Document overlap between validation and training shards, by hashed token shingles (check T9).

A shingle is a window of ``k`` consecutive tokens inside one document (no window holds a BOS, so none
crosses a document boundary). Its hash is the polynomial sum_j t[i+j] * B^j modulo 2^64, computed for
every window at once from prefix sums: with P[n] = sum_{m<n} t[m] B^m, the window at i hashes to
(P[i+k] - P[i]) * B^-i, and B (odd) is invertible modulo 2^64, so uint64 wrap-around does the
arithmetic. Training shards are read in chunks and only every ``stride``-th window is hashed: a copied
span of at least k + stride - 1 tokens still contains one of them.

Web text shares boilerplate, so a shared shingle alone is not a leak. Each hit is extended into the
longest identical aligned run of validation and training tokens around it, and a validation document
counts as leaked when such runs cover at least ``leak_fraction`` of its tokens and it has at least
``min_doc_tokens`` tokens (default 2k: a short document that is mostly a licence line or a cookie
notice shares boilerplate, it is not a copied document).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pgolf_core.challenge import VAL_DOCS
from pgolf_core.data.shards import read_shard

_BASE = 0x9E3779B97F4A7C15  # odd: invertible modulo 2^64
_MOD = 1 << 64
CHUNK_TOKENS = 1 << 22


def _powers(base: int, n: int) -> np.ndarray:
    """base^0 .. base^(n-1) modulo 2^64."""
    out = np.full(n, base, dtype=np.uint64)
    out[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(out, dtype=np.uint64)


def shingle_hashes(
    tokens: np.ndarray, k: int = 64, *, bos_id: int = 1, stride: int = 1, offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the BOS-free k-token windows of ``tokens`` that start at positions p with
    (p + offset) % stride == 0; returns (hashes uint64, start positions int64)."""
    if k < 1 or stride < 1:
        raise ValueError(f"shingle length k={k} and stride={stride} must be >= 1")
    t = np.asarray(tokens)
    n_windows = len(t) - k + 1
    if n_windows <= 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    is_bos = np.concatenate([[0], np.cumsum(t == bos_id, dtype=np.int64)])
    starts = np.arange((-offset) % stride, n_windows, stride, dtype=np.int64)
    starts = starts[is_bos[starts + k] == is_bos[starts]]
    with np.errstate(over="ignore"):
        prefix = np.concatenate(
            [[np.uint64(0)], np.cumsum(t.astype(np.uint64) * _powers(_BASE, len(t)), dtype=np.uint64)]
        )
        inverse = _powers(pow(_BASE, -1, _MOD), n_windows)
        hashes = (prefix[starts + k] - prefix[starts]) * inverse[starts]
    return hashes, starts


@dataclass
class OverlapReport:
    k: int
    stride: int
    leak_fraction: float
    min_doc_tokens: int
    val_docs: int
    val_docs_checked: int  # documents with at least one full shingle (shorter ones cannot be tested)
    train_tokens_scanned: int
    train_windows_hit: int
    val_tokens_covered: int  # validation tokens inside runs of >= k tokens also found in training data
    doc_fraction: dict[int, float] = field(
        default_factory=dict
    )  # doc index -> covered fraction, docs with any run
    doc_tokens: dict[int, int] = field(default_factory=dict)  # their content lengths

    def _mostly_covered(self, long: bool) -> list[int]:
        return sorted(
            d
            for d, f in self.doc_fraction.items()
            if f >= self.leak_fraction and (self.doc_tokens[d] >= self.min_doc_tokens) == long
        )

    @property
    def leaked(self) -> list[int]:
        return self._mostly_covered(long=True)

    @property
    def short_boilerplate(self) -> list[int]:
        """Mostly covered, but shorter than ``min_doc_tokens``: reported, not counted as leaks."""
        return self._mostly_covered(long=False)

    @property
    def clean(self) -> bool:
        return not self.leaked

    def summary(self) -> str:
        worst = max(self.doc_fraction.values(), default=0.0)
        return (
            f"{len(self.leaked)} of {self.val_docs:,} validation documents (>= {self.min_doc_tokens} tokens) "
            "are "
            f">= {self.leak_fraction:.0%} covered by training text ({len(self.doc_fraction)} share some "
            f"{self.k}-token run, worst {worst:.0%}; {len(self.short_boilerplate)} shorter ones mostly "
            "boilerplate; "
            f"{self.val_docs_checked:,} long enough to test; {self.train_tokens_scanned:,} training tokens "
            "scanned, "
            f"every {self.stride}th window)"
        )


def _doc_bounds(val: np.ndarray, bos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(doc index per position, content start per doc): a document starts at each BOS (tokens before
    the first BOS form document 0)."""
    bos = np.flatnonzero(val == bos_id)
    starts = bos + 1 if len(bos) and bos[0] == 0 else np.concatenate([[0], bos + 1])
    doc = np.searchsorted(starts, np.arange(len(val)), side="right") - 1
    return np.maximum(doc, 0), starts


def _chunks(tokens: np.ndarray, k: int) -> Iterable[tuple[int, np.ndarray]]:
    """(start, piece) pieces of ``tokens`` overlapping by k - 1 tokens, so every window lies in one piece."""
    for start in range(0, max(len(tokens) - k + 1, 1), CHUNK_TOKENS):
        yield start, np.asarray(tokens[start : start + CHUNK_TOKENS + k - 1])


def _run_length(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two equal-length arrays."""
    diff = np.flatnonzero(a != b)
    return int(diff[0]) if len(diff) else len(a)


def _extend(val: np.ndarray, q: int, doc: tuple[int, int], train: np.ndarray, p: int) -> tuple[int, int]:
    """The identical aligned run around val[q:q+k] == train[p:p+k], kept inside the validation
    document's content ``doc`` = [first, end); returned as validation positions [start, end). A
    training BOS ends the run by itself: validation content holds none."""
    back = min(q - doc[0], p)
    before = _run_length(val[q - back : q][::-1], train[p - back : p][::-1]) if back > 0 else 0
    ahead = min(doc[1] - q, len(train) - p)
    return q - before, q + _run_length(val[q : q + ahead], train[p : p + ahead])


def val_train_overlap(
    val_tokens: np.ndarray,
    train_files: Sequence[str | os.PathLike],
    *,
    k: int = 64,
    stride: int = 16,
    bos_id: int = 1,
    leak_fraction: float = 0.5,
    min_doc_tokens: int | None = None,
    max_train_tokens: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> OverlapReport:
    """How much of each validation document appears verbatim (in runs of >= k tokens) in training shards.

    Every validation shingle is hashed; training windows at every ``stride``-th position of each shard,
    up to ``max_train_tokens`` tokens over all shards (None: all). ``progress`` receives the number of
    training tokens scanned after each chunk.
    """
    if not 0 < leak_fraction <= 1:
        raise ValueError(f"leak_fraction={leak_fraction} must be in (0, 1]")
    val = np.asarray(val_tokens)
    doc, starts = _doc_bounds(val, bos_id)
    ends = np.append(starts[1:] - 1, len(val))  # content of doc d: val[starts[d]:ends[d]]
    v_hash, v_start = shingle_hashes(val, k, bos_id=bos_id)
    order = np.argsort(v_hash, kind="stable")
    v_sorted, v_pos = v_hash[order], v_start[order]
    covered = np.zeros(len(val), dtype=bool)
    budget = max_train_tokens if max_train_tokens is not None else np.iinfo(np.int64).max
    scanned = hits = 0
    for path in train_files:
        shard = read_shard(path)
        # Alignment p - q -> the last validation run found on it. Hits come in increasing p, so along one
        # alignment in increasing q, and runs are maximal: a hit is either inside the last run or past it.
        # (Keeping every run and testing them all was quadratic on a copied split: one alignment, 40k runs.)
        last_run: dict[int, tuple[int, int]] = {}
        for start, piece in _chunks(shard, k):
            if scanned >= budget:
                break
            piece = piece[: budget - scanned + k - 1]
            h, pos = shingle_hashes(piece, k, bos_id=bos_id, stride=stride, offset=start)
            lo = np.searchsorted(v_sorted, h, side="left")
            hi = np.searchsorted(v_sorted, h, side="right")
            found = np.flatnonzero(hi > lo)
            hits += len(found)
            for i in found:  # a Python loop over hits only; each aligned run is extended once
                p = start + int(pos[i])
                for q in v_pos[lo[i] : hi[i]]:
                    q = int(q)
                    last = last_run.get(p - q)
                    if last is not None and last[0] <= q and q + k <= last[1]:
                        continue  # a later window of a run already found
                    if not np.array_equal(val[q : q + k], shard[p : p + k]):
                        continue  # a hash collision
                    d = doc[q]
                    a, b = _extend(val, q, (int(starts[d]), int(ends[d])), shard, p)
                    last_run[p - q] = (a, b)
                    covered[a:b] = True
            scanned += max(len(piece) - k + 1, 0)
            if progress is not None:
                progress(scanned)
        if scanned >= budget:
            break
    lengths = ends - starts
    per_doc = np.bincount(doc[covered], minlength=len(starts))
    fraction = {int(d): float(per_doc[d] / lengths[d]) for d in np.flatnonzero(per_doc)}
    return OverlapReport(
        k=k,
        stride=stride,
        leak_fraction=leak_fraction,
        min_doc_tokens=2 * k if min_doc_tokens is None else min_doc_tokens,
        val_docs=int(np.count_nonzero(val == bos_id)),
        val_docs_checked=len(np.unique(doc[v_start])),
        train_tokens_scanned=scanned,
        train_windows_hit=hits,
        val_tokens_covered=int(covered.sum()),
        doc_fraction=fraction,
        doc_tokens={d: int(lengths[d]) for d in fraction},
    )


# The known CaseOps leak (#2127): the CaseOps prep script's ``--val-docs`` defaulted to 10,000, so local
# exports put documents 10,000-49,999 of the canonical 50,000-document validation set into training (in
# 10^7-token shards: 1,499 of them instead of the canonical export's 80), while runs scored the canonical
# validation set; 15 of 34 audited CaseOps PRs trained on 80% of it.
LEAKY_VAL_DOCS = 10_000
LEAKY_TRAIN_SHARDS = 1499
_LEAK = (
    "the known CaseOps leak (#2127): an export with the prep script's old --val-docs 10000 default puts "
    f"validation documents {LEAKY_VAL_DOCS:,}-{VAL_DOCS - 1:,} into training"
)


def known_leak(
    report: OverlapReport | None = None,
    *,
    train_shards: int | None = None,
    val_docs: int | None = None,
    canonical_val_docs: int = VAL_DOCS,
) -> str | None:
    """Why this split looks like the #2127 leak, or None. Any one fingerprint suffices:

    - ``train_shards`` == 1,499 (the leaky exports' shard count);
    - a validation split of 10,000 documents (``val_docs``, or the report's) where the canonical one
      has ``canonical_val_docs``: its training shards begin at document 10,000;
    - the scan (``report``) found leaked documents, all at index >= 10,000, and at least half of the
      testable documents from 10,000 on (a copy of the tail of the canonical split, not boilerplate).
    """
    signs = []
    if train_shards == LEAKY_TRAIN_SHARDS:
        signs.append(f"{train_shards:,} training shards, the leaky exports' count")
    docs = val_docs if val_docs is not None else (report.val_docs if report is not None else None)
    if docs == LEAKY_VAL_DOCS and canonical_val_docs > LEAKY_VAL_DOCS:
        signs.append(
            f"a {docs:,}-document validation split where the canonical one has {canonical_val_docs:,}"
        )
    leaked = report.leaked if report is not None else []
    if leaked and leaked[0] >= LEAKY_VAL_DOCS and report.val_docs > LEAKY_VAL_DOCS:
        testable_tail = (report.val_docs - LEAKY_VAL_DOCS) * report.val_docs_checked / max(report.val_docs, 1)
        if len(leaked) >= 0.5 * testable_tail:
            signs.append(
                f"{len(leaked):,} validation documents found in training, all from document {leaked[0]:,} on "
                f"and none before {LEAKY_VAL_DOCS:,}"
            )
    return f"{_LEAK} ({'; '.join(signs)})" if signs else None
