"""Stage ``q_tilt``: the artifact round trip scored by sliding window with the token-only n-gram tilt
(#2130 -> #2135; the legal tilt is worth about -0.001 bpb in #2130's single-seed notes).

The model's windows are q_sw's (stride ``eval.stride``, or non-overlapping windows when it is 0); the
hints are built from the scored stream inside the evaluation's timer, as #2135 does (its precompute took
167-201 s on the pod and counts toward the eval budget), and the record's notes state how long they
took. The tilt changes the scored loss only: nothing here trains. TTT is not combined with the tilt in
this stage (the records apply it to phased TTT's scored loss; that needs the tilt inside the TTT's own
scoring loop). Rank 0 scores and the other ranks receive its record, as in q_ngram.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from pgolf_core.eval import EvalResult, WindowedTorchModel
from pgolf_core.eval.tilt import TiltScorer
from pgolf_core.pipeline.roundtrip import StageWeights
from pgolf_core.pipeline.session import Session
from pgolf_core.pipeline.verdicts import main_rank_stage
from pgolf_core.stages import StageRecord


def tilt_notes(info: dict, n_targets: int) -> str:
    """The record's note: the precompute time (inside the eval timer) and how often the tilt fired."""
    return (
        f"hint precompute {info['hint_seconds']:.2f} s (inside the eval timer); "
        f"{info['gated']:,} of {n_targets:,} targets tilted ({info['gated_frac']:.2%})"
    )


def stage_q_tilt(ctx: Session, weights: StageWeights, name: str) -> StageRecord | None:
    """q_tilt: sliding-window log-probs of the round trip with the tilt of ``eval.tilt`` on the scored
    loss; T1-T5 run the same ``TiltScorer`` on the probe."""
    cfg = ctx.cfg
    tc = cfg.eval.tilt
    if not tc.enabled:
        raise ValueError("stage 'q_tilt' needs eval.tilt.enabled: true (the tilt of #2135)")
    model = ctx.model_with(weights.state)
    stride = cfg.eval.stride or cfg.eval_seq_len

    def make_scorer() -> TiltScorer:
        lm = WindowedTorchModel(
            model, cfg.eval_seq_len, stride=stride, temperature=cfg.eval.temperature, autocast=ctx.autocast
        )
        return TiltScorer(lm, order=tc.order, threshold=tc.threshold, beta=tc.beta)

    def evaluate() -> EvalResult:
        t0 = time.perf_counter()  # the hints are built inside score_stream, so inside this timer
        score = make_scorer().score_stream(np.asarray(ctx.val, dtype=np.int64))
        nbytes = ctx.target_bytes.total(ctx.val)
        res = EvalResult.from_stream(score, nbytes, time.perf_counter() - t0, ctx.target_bytes.kind)
        return replace(res, notes=tilt_notes(score.info, ctx.val.size - 1))

    return main_rank_stage(ctx, name, evaluate, make_scorer, weights)
