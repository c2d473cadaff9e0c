"""The window plan: which windows an evaluation runs and which targets each of them scores.

Windows of at most ``seq_len`` tokens start every ``stride`` tokens, each scoring a disjoint,
contiguous range of target positions, so that every target 1..N-1 of the stream is scored exactly
once (compliance check T4). ``stride == seq_len`` is standard evaluation (the challenge baseline's
``eval_val``, record folder 2026-03-17_NaiveBaseline): non-overlapping windows, every target scored
with 0..seq_len-1 tokens of context. A smaller stride is sliding-window evaluation (record folder
2026-03-19_SlidingWindowEval, at seq 1024: 1.2244 -> 1.1925 bpb from evaluation alone, about 4x the
evaluation time): the first window scores all its targets, every later one only the targets after
its first ``seq_len - stride``, so each of them sees at least ``seq_len - stride + 1`` tokens of context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pgolf_core.dist import DistInfo


@dataclass(frozen=True)
class WindowPlan:
    """Windows over a stream of ``n_tokens`` tokens (targets 1..n_tokens-1).

    Window w reads the inputs x[starts[w] : starts[w] + lengths[w]] and scores the targets at positions
    starts[w] + 1 + [score_from[w], lengths[w]). The scored ranges are disjoint, contiguous and cover
    every target once, in increasing order of w.
    """

    n_tokens: int
    seq_len: int
    stride: int
    starts: np.ndarray  # int64 [W]
    lengths: np.ndarray  # int64 [W]
    score_from: np.ndarray  # int64 [W]

    @property
    def num_windows(self) -> int:
        return int(self.starts.shape[0])

    @property
    def first_scored(self) -> np.ndarray:
        """The first target position each window scores."""
        return self.starts + 1 + self.score_from

    @property
    def last_scored(self) -> np.ndarray:
        """The last target position each window scores (inclusive)."""
        return self.starts + self.lengths

    def scored_positions(self, ids: np.ndarray) -> np.ndarray:
        """All target positions scored by windows ``ids``, in order."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return np.zeros(0, dtype=np.int64)
        ranges = zip(self.first_scored[ids], self.last_scored[ids])
        return np.concatenate([np.arange(a, b + 1) for a, b in ranges])

    def window_of(self, positions: Sequence[int]) -> np.ndarray:
        """The window that scores each target position."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 1 or positions.max() >= self.n_tokens):
            raise ValueError(f"target positions must lie in 1..{self.n_tokens - 1}")
        return np.searchsorted(self.first_scored, positions, side="right") - 1


def window_plan(n_tokens: int, seq_len: int, stride: int) -> WindowPlan:
    """The sliding-window schedule with an exactly-once tail.

    Windows start at 0, stride, 2 stride, ...; window k > 0 scores the targets in
    (k stride + seq_len - stride, k stride + seq_len], the first window all of 1..seq_len. The last
    window is cut at the end of the stream instead of being shifted back, so it scores only targets no
    earlier window scored (the common ``max(wlen - stride, 0)`` rule of #549-style code re-scores the
    tail; #1218 fixed it by filtering window starts, about 2k duplicate contributions).
    ``stride == seq_len`` gives standard, non-overlapping evaluation.
    """
    targets = n_tokens - 1
    if targets < 1:
        raise ValueError(f"a stream of {n_tokens} tokens has no target to score")
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride must lie in 1..seq_len ({seq_len}), got {stride}")
    num = 1 + -(-max(0, targets - seq_len) // stride)
    starts = np.arange(num, dtype=np.int64) * stride
    lengths = np.minimum(seq_len, targets - starts)
    score_from = np.full(num, seq_len - stride, dtype=np.int64)
    score_from[0] = 0
    return WindowPlan(n_tokens, seq_len, stride, starts, lengths, score_from)


def rank_slice(count: int, dist: DistInfo) -> slice:
    """This rank's contiguous share of ``count`` items (shares differ by at most one)."""
    return slice(count * dist.rank // dist.world_size, count * (dist.rank + 1) // dist.world_size)


def device_tokens(tokens: np.ndarray, device: torch.device) -> torch.Tensor:
    """The stream on ``device`` as int32 (half of int64; windows are cast to int64 per batch)."""
    return torch.from_numpy(np.asarray(tokens).astype(np.int32)).to(device)


def window_batch(tokens_d: torch.Tensor, starts, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) int64 (B, seq_len) for windows starting at ``starts`` (numpy or a tensor); reads past the
    end repeat the last token (a causal model's outputs at valid positions never see them)."""
    n = tokens_d.shape[0]
    offsets = torch.arange(seq_len + 1, device=tokens_d.device)
    idx = torch.as_tensor(starts, device=tokens_d.device)[:, None] + offsets
    window = tokens_d[idx.clamp_(max=n - 1)].long()
    return window[:, :-1], window[:, 1:]
