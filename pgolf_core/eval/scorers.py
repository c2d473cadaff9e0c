"""Scorer adapters (``pgolf_core.scoring``) over the window plan: what the compliance checks run.

A fixed model evaluated with standard or sliding windows, single process, as a ``Scorer``: its
``score_stream`` is ``evaluate_plan`` with the per-position stream kept, and ``predictive`` runs the
very window that scores each position.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pgolf_core.dist import DistInfo
from pgolf_core.eval.bpb import Capture, evaluate_plan
from pgolf_core.eval.result import EvalResult
from pgolf_core.eval.windows import WindowPlan, device_tokens, window_batch, window_plan
from pgolf_core.runtime import autocast_context, model_device
from pgolf_core.scoring import ScoreEvents, Scorer, StreamScore


def stream_score_from(result: EvalResult) -> StreamScore:
    """A result's per-position stream as a ``Scorer`` returns it (loss, tokens, seconds added to its info)."""
    score = result.stream_score()
    score.info.update(loss=result.loss, tokens=result.tokens, seconds=result.seconds)
    return score


class WindowScorer(Scorer):
    """A fixed model evaluated over a ``WindowPlan``: standard (stride == seq_len) or sliding.

    Single process. ``predictive`` runs the very window that scores each position and returns
    softmax(logits / T) at it, so -log of it at x[j] is the scored NLL.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        seq_len: int,
        stride: int = 0,
        batch_seqs: int = 32,
        temperature: float = 1.0,
        autocast: bool = False,
    ):
        self.model, self.seq_len, self.stride = model, seq_len, stride or seq_len
        self.batch_seqs, self.temperature, self.autocast = batch_seqs, temperature, autocast
        self.vocab_size = int(model.cfg.vocab_size)
        self.name = "standard" if self.stride == seq_len else f"sliding_s{self.stride}"

    def plan(self, tokens: np.ndarray) -> WindowPlan:
        return window_plan(len(tokens), self.seq_len, self.stride)

    def score_stream(self, tokens: np.ndarray, events: ScoreEvents | None = None) -> StreamScore:
        res = evaluate_plan(
            self.model,
            tokens,
            None,
            self.plan(tokens),
            batch_seqs=self.batch_seqs,
            dist=DistInfo(),
            device=model_device(self.model),
            autocast=self.autocast,
            temperature=self.temperature,
            return_streams=True,
            events=events,
        )
        return stream_score_from(res)

    @torch.no_grad()
    def predictive(self, tokens: np.ndarray, positions: Sequence[int]) -> np.ndarray:
        plan = self.plan(tokens)
        positions = np.asarray(positions, dtype=np.int64)
        wids = np.unique(plan.window_of(positions))
        capture = Capture(positions, self.model.logits, self.temperature)
        tokens_d = device_tokens(tokens, model_device(self.model))
        for b in range(0, len(wids), self.batch_seqs):
            wid = wids[b : b + self.batch_seqs]
            x, _ = window_batch(tokens_d, plan.starts[wid], plan.seq_len)
            row_pos = [np.arange(plan.first_scored[w], plan.last_scored[w] + 1) for w in wid]
            with autocast_context(tokens_d.device, self.autocast):
                capture.take(x, plan.starts[wid], row_pos)
        return capture.matrix(positions)


class StandardScorer(WindowScorer):
    """Standard evaluation (non-overlapping windows) of a fixed model, as a ``Scorer``."""

    def __init__(
        self, model: torch.nn.Module, *, seq_len: int, batch_seqs: int = 32, temperature: float = 1.0
    ):
        super().__init__(
            model, seq_len=seq_len, stride=seq_len, batch_seqs=batch_seqs, temperature=temperature
        )


class SlidingScorer(WindowScorer):
    """Sliding-window evaluation of a fixed model, as a ``Scorer``."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        seq_len: int,
        stride: int,
        batch_seqs: int = 32,
        temperature: float = 1.0,
    ):
        super().__init__(
            model, seq_len=seq_len, stride=stride, batch_seqs=batch_seqs, temperature=temperature
        )
