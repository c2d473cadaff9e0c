"""The stages with the token-only n-gram tilt (#2130 -> #2135; the legal tilt is worth about -0.001 bpb
in #2130's single-seed notes) on the scored loss: ``q_tilt`` and ``q_ttt_tilt``.

- ``q_tilt``: the artifact round trip scored by sliding window (q_sw's windows: stride ``eval.stride``,
  or non-overlapping windows when it is 0) with the tilt. Rank 0 scores and the other ranks receive its
  record, as in q_ngram.
- ``q_ttt_tilt``: q_ttt's TTT (``ttt.mode``: chunk, lora or phased) with the tilt on the loss it commits:
  #2135's score (leaderboard #1, 1.05651) is phased TTT + the tilt. Each target's tilted NLL comes from
  the same forward as its TTT NLL, before any update that uses it; the TTT's training loss is not
  tilted, so the updates are q_ttt's. A stage of its own, so that q_ttt always means plain TTT.

In both the hints are built from the scored stream inside the evaluation's timer, as #2135 does (its
precompute took 167-201 s on the pod and counts toward the eval budget), and the record's notes state
where they were built, how long it took and how many targets were tilted. The tilt changes the scored
loss only.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from pgolf_core.eval import EvalResult, WindowedTorchModel
from pgolf_core.eval.tilt import TiltScorer
from pgolf_core.pipeline.roundtrip import StageWeights
from pgolf_core.pipeline.session import Session
from pgolf_core.pipeline.verdicts import evaluate_guarded, main_rank_stage, probe_config, stage_record
from pgolf_core.stages import StageRecord
from pgolf_core.ttt import TTTInputs, run_ttt, ttt_scorer

TTT_HINTS_WHERE = "on every rank from the whole stream, inside the TTT's eval timer, before its first score"


def tilt_notes(info: dict, n_targets: int, where: str = "inside the eval timer") -> str:
    """The record's note: the precompute time (inside the eval timer) and how often the tilt fired."""
    return (
        f"hint precompute {info['hint_seconds']:.2f} s ({where}); "
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


def stage_q_ttt_tilt(ctx: Session, weights: StageWeights, name: str) -> StageRecord:
    """q_ttt_tilt: the TTT of ``cfg.ttt`` on the round trip with the tilt of ``eval.tilt`` on its scored
    loss; T1-T5 run the same TTT scorer with the tilt on the probe (its ``predictive`` gives the tilted
    rows). All ranks score, as in q_ttt."""
    cfg = ctx.cfg
    if not (cfg.ttt.enabled and cfg.eval.tilt.enabled) or cfg.ttt.prequant_ablation:
        raise ValueError(
            "stage 'q_ttt_tilt' needs ttt.enabled: true and eval.tilt.enabled: true, without "
            "ttt.prequant_ablation (got ttt.enabled "
            f"{cfg.ttt.enabled}, eval.tilt.enabled {cfg.eval.tilt.enabled}, ttt.prequant_ablation "
            f"{cfg.ttt.prequant_ablation})"
        )
    model = ctx.model_with(weights.state)
    inputs = TTTInputs.from_config(
        model, ctx.val, ctx.target_bytes, cfg, dist=ctx.dist, device=ctx.device, tilt=True
    )
    res, t6 = evaluate_guarded(ctx, lambda: run_ttt(inputs)[0])
    info = res.info["tilt"]
    res = replace(res, notes=f"{tilt_notes(info, info['targets'], TTT_HINTS_WHERE)}; {cfg.ttt.mode} TTT")
    probe_cfg = probe_config(cfg, cfg.eval.probe_tokens)
    return stage_record(ctx, name, res, lambda: ttt_scorer(model, probe_cfg, tilt=True), [t6], weights)
