"""The n-gram scorer: the model mixed with the legal cache, scored score-first per segment.

Scoring reads p_t(x_t) from the full distribution without materializing the other V - 1 entries:
because every row's stored sum equals the sum of its counts, (c[x] + prior mass) / (sum + smoothing
mass) is exactly the x-entry of a normalized row, the case in which reading only the target entry
equals building the row. ``predictive`` materializes the full [n, V] rows in float64 (what the
compliance checks read); ``NgramScorer(full_rows=True)`` materializes every segment's rows (float32)
and mixture and reads the target from them. The tests and ``compliance.check_normalization`` assert
that all paths give the same NLL (1e-12 nats for the target path, ~3e-7 for the float32 rows).

Legend for array suffixes: N stream length, n positions of a segment or block, V vocabulary,
O orders (2..max_order), E experts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pgolf_core.config import NgramConfig
from pgolf_core.eval.logprobs import ModelLogprobs
from pgolf_core.ngram.cache import NgramCache
from pgolf_core.ngram.mixers import HEDGE_EXPERTS, HedgeMixer, build_mixer, entropy_nats
from pgolf_core.scoring import ScoreEvents, Scorer, StreamScore


def _segment_bounds(lo: int, hi: int, seg: int):
    """Segments [a, b) of the positions lo..hi-1, aligned to position 1 of the stream."""
    a = lo
    while a < hi:
        b = min(hi, a + seg - (a - 1) % seg)
        yield a, b
        a = b


class NgramScorer(Scorer):
    """The model mixed with the legal n-gram cache, scored score-first per segment.

    For each segment of ``segment_tokens`` positions, left to right: form each position's
    distribution from the state (tables filled by earlier segments, mixer weights from earlier
    segments) and the prefix, commit the NLLs (``events.scored``), then insert the segment into the
    tables (``events.updated(..., "cache")``) and, for Hedge, update the weights (``"mixer"``). Within a
    segment, positions do not see each other's tokens (#909's timing, score-first per 64-token
    segment, which was never the problem with #909). Every
    position 1..N-1 is scored exactly once.

    The model's log-probabilities are fetched ``block_tokens`` positions at a time (32 MiB of float32
    at V = 1024), and the tables take ``cache.table_bytes`` (201.5 MB by default) of host RAM.

    Args:
        model: the model's causal log-probabilities (``ModelLogprobs``).
        cfg: ``NgramConfig`` (orders, rows, min_count, smoothing, mixer, segment).
        full_rows: score from materialized [n, V] distributions (the slow reference path).
        block_tokens: positions whose model log-probs are fetched at once (a multiple of the segment).
    """

    def __init__(
        self,
        model: ModelLogprobs,
        cfg: NgramConfig | None = None,
        *,
        full_rows: bool = False,
        block_tokens: int = 8192,
    ):
        self.cfg = cfg or NgramConfig(enabled=True)
        self.model = model
        self.vocab_size = model.vocab_size
        self.cache = NgramCache.from_config(self.cfg, self.vocab_size)
        self.mixer = build_mixer(self.cfg)
        self.full_rows = full_rows
        self._rows_buf: np.ndarray | None = None
        self._p_buf: np.ndarray | None = None
        seg = self.cfg.segment_tokens
        self.block_tokens = max(seg, block_tokens // seg * seg)
        self.name = f"ngram_{self.mixer.name}"

    def score_stream(self, tokens: np.ndarray, events: ScoreEvents | None = None) -> StreamScore:
        tokens = np.asarray(tokens, dtype=np.int64)
        nll = np.full(tokens.size, np.nan)
        matched = self._run(tokens, events or ScoreEvents(), nll, None)
        info = {"table_bytes": self.cache.table_bytes, "matched_frac": matched / max(tokens.size - 1, 1)}
        if isinstance(self.mixer, HedgeMixer):
            info["hedge_weights"] = dict(
                zip(HEDGE_EXPERTS, self.mixer.weights.round(6).tolist(), strict=True)
            )
        return StreamScore(nll=nll, info=info)

    def predictive(self, tokens: np.ndarray, positions: Sequence[int]) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 1 or positions.max() >= tokens.size):
            raise ValueError(f"positions must lie in 1..{tokens.size - 1}")
        out = np.empty((positions.size, self.vocab_size))
        self._run(tokens, ScoreEvents(), np.full(tokens.size, np.nan), (positions, out))
        return out

    def _run(self, tokens, events, nll, probes) -> int:
        """The score-first loop; with ``probes`` = (positions, out) it fills their full distributions
        at the moment their segment is about to be scored and stops after the last one."""
        cache, mixer = self.cache, self.mixer
        cache.reset()
        mixer.reset()
        N, seg = tokens.size, self.cfg.segment_tokens
        stop = N if probes is None else int(probes[0].max(initial=0)) + 1
        positions = np.arange(N)
        matched_total = 0
        for lo in range(1, stop, self.block_tokens):
            hi = min(lo + self.block_tokens, stop)
            lp_nV = np.asarray(self.model.logprobs(tokens, lo, hi), dtype=np.float32)
            tgt_n = tokens[lo:hi]
            idx_n = np.arange(hi - lo)
            # Model probabilities are exp of float32 log-probs everywhere (target entries, full rows,
            # entropy), so the target path and the full-row path see the same numbers bit for bit.
            p_nV = None
            if mixer.needs_entropy or self.full_rows or probes is not None:
                # one reused [block, V] buffer: a fresh 32 MiB array page-faults on every block
                if self._p_buf is None or self._p_buf.shape[0] < hi - lo:
                    self._p_buf = np.empty((self.block_tokens, self.vocab_size), dtype=np.float32)
                p_nV = np.exp(lp_nV, out=self._p_buf[: hi - lo])
            pm_n = (p_nV[idx_n, tgt_n] if p_nV is not None else np.exp(lp_nV[idx_n, tgt_n])).astype(
                np.float64
            )
            h_n = entropy_nats(lp_nV, p_nV) if mixer.needs_entropy else np.zeros(hi - lo)
            rows_On = cache.rows(tokens, lo, hi)
            for a, b in _segment_bounds(lo, hi, seg):
                i, j = a - lo, b - lo
                if probes is not None:
                    self._fill_probes(probes, a, b, p_nV[i:j], rows_On[:, i:j], h_n[i:j])
                if self.full_rows:
                    lp_seg, expert_lp, hit = self._score_full(
                        p_nV[i:j], rows_On[:, i:j], tgt_n[i:j], h_n[i:j]
                    )
                else:
                    q_n, hit = cache.target_prob(rows_On[:, i:j], tgt_n[i:j])
                    lp_seg, expert_lp = mixer.target(pm_n[i:j], q_n, hit, h_n[i:j])
                nll[a:b] = -lp_seg
                matched_total += int(hit.sum())
                events.scored(positions[a:b])
                # Only now, with the segment's NLLs committed, does its text enter the state.
                cache.update(rows_On[:, i:j], tgt_n[i:j])
                events.updated(positions[a:b], "cache")
                if mixer.stateful:
                    mixer.update(expert_lp)
                    events.updated(positions[a:b], "mixer")
        return matched_total

    def _score_full(self, p_nV, rows_On, tgt_n, h_n):
        """Materialize the cache rows and the mixture [n, V], then read the NLL at the target. float32
        rows: within ~3e-7 nats of the float64 target path (tested) at half the memory traffic."""
        n = tgt_n.size
        if self._rows_buf is None or self._rows_buf.shape[0] != n:
            self._rows_buf = np.empty((n, self.vocab_size), dtype=np.float32)
        q_nV, hit = self.cache.distribution(rows_On, np.float32, out=self._rows_buf)
        idx = np.arange(n)
        q_n, pm_n = q_nV[idx, tgt_n].astype(np.float64), p_nV[idx, tgt_n].astype(np.float64)
        expert_lp = self.mixer.target(pm_n, q_n, hit, h_n)[1]  # Hedge's update, from the same rows
        mix_nV = self.mixer.full(p_nV, q_nV, hit, h_n, out=q_nV)  # in place: q is read above
        return np.log(mix_nV[idx, tgt_n].astype(np.float64)), expert_lp, hit

    def _fill_probes(self, probes, a, b, p_nV, rows_On, h_n) -> None:
        positions, out = probes
        k = np.flatnonzero((positions >= a) & (positions < b))
        if k.size == 0:
            return
        i = positions[k] - a
        q_nV, hit = self.cache.distribution(rows_On[:, i])
        out[k] = self.mixer.full(p_nV[i].astype(np.float64), q_nV, hit, h_n[i])
