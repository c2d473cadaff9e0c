"""The stages: each evaluates one set of weights one way and returns its StageRecord with verdicts.

Every stage function has one signature, ``stage(ctx, weights, name) -> StageRecord | None``: the session,
the ``StageWeights`` to evaluate (a checkpoint's, or the artifact round trip's from ``quantize_weights``)
and the record's name (a stage of ``pgolf_core.stages.STAGES``, or an ablation's own descriptive name;
``stage_name`` gives the driver's). ``STAGE_FNS`` maps each stage to its function. None only on a rank
that does not hold the record. Every stage divides by the session's ``target_bytes`` (byte tables, or
the CaseOps sidecar), and its record says which (``StageRecord.bytes_source``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from pgolf_core.compliance import check_train_time
from pgolf_core.config import RunConfig
from pgolf_core.eval import (
    EvalResult,
    SlidingScorer,
    StandardScorer,
    evaluate_sliding,
    evaluate_standard,
)
from pgolf_core.pipeline.roundtrip import StageWeights
from pgolf_core.pipeline.session import Session
from pgolf_core.pipeline.tilt_stage import stage_q_tilt, stage_q_ttt_tilt
from pgolf_core.pipeline.verdicts import main_rank_stage, evaluate_guarded, probe_config, stage_record
from pgolf_core.scoring import Scorer
from pgolf_core.stages import STAGES, StageRecord
from pgolf_core.ttt import TTTInputs, run_ttt, ttt_scorer

StageFn = Callable[[Session, StageWeights, str], StageRecord | None]

PREQUANT_STAGE = "q_ttt_prequant_NONCOMPLIANT"  # what q_ttt is recorded as when it runs the ablation


def stage_name(stage: str, cfg: RunConfig) -> str:
    """The record name of ``stage`` under ``cfg``: the stage itself, except that the NON-COMPLIANT
    pre-quant TTT ablation is never recorded under a standard stage name."""
    return PREQUANT_STAGE if stage == "q_ttt" and cfg.ttt.prequant_ablation else stage


def standard_eval(ctx: Session, model) -> EvalResult:
    """Standard (non-overlapping windows) evaluation of ``model`` on the session's stream."""
    return evaluate_standard(
        model,
        ctx.val,
        ctx.target_bytes,
        seq_len=ctx.cfg.eval_seq_len,
        batch_tokens=ctx.cfg.eval.batch_tokens,
        dist=ctx.dist,
        device=ctx.device,
        autocast=ctx.autocast,
        temperature=ctx.cfg.eval.temperature,
    )


def standard_scorer(ctx: Session, model) -> Callable[[], Scorer]:
    """The scorer of ``standard_eval``, for the probe checks."""
    return lambda: StandardScorer(model, seq_len=ctx.cfg.eval_seq_len, temperature=ctx.cfg.eval.temperature)


def stage_checkpoint(ctx: Session, weights: StageWeights, name: str) -> StageRecord:
    """pre / ema: a checkpoint's weights, standard evaluation; T8 train from the run's own record."""
    model = ctx.model_with(weights.state)
    res, t6 = evaluate_guarded(ctx, lambda: standard_eval(ctx, model))
    rec = stage_record(ctx, name, res, standard_scorer(ctx, model), [t6], weights)
    train_s = ctx.run.get("train_seconds")
    if train_s is None:
        return rec
    total = train_s + ctx.run.get("calib_seconds", 0.0)
    t8 = check_train_time(
        total,
        configured_cap=ctx.cfg.train.max_wallclock_seconds or None,
        on_target_hardware=ctx.on_target,
        hardware=ctx.hardware,
    )
    return replace(rec, verdicts=[*rec.verdicts, t8])


def stage_q(ctx: Session, weights: StageWeights, name: str) -> StageRecord:
    """q: standard evaluation of the round trip; the one record that carries the quantization's T6."""
    model = ctx.model_with(weights.state)
    res, t6 = evaluate_guarded(ctx, lambda: standard_eval(ctx, model))
    data_access = [t6] if weights.t6_quant is None else [weights.t6_quant, t6]
    return stage_record(ctx, name, res, standard_scorer(ctx, model), data_access, weights)


def stage_q_sw(ctx: Session, weights: StageWeights, name: str) -> StageRecord:
    """q_sw: sliding-window evaluation (stride ``eval.stride``) of the round trip."""
    cfg = ctx.cfg
    if not cfg.eval.stride:
        raise ValueError("stage 'q_sw' needs eval.stride > 0 (the records use 64)")
    model = ctx.model_with(weights.state)
    res, t6 = evaluate_guarded(
        ctx,
        lambda: evaluate_sliding(
            model,
            ctx.val,
            ctx.target_bytes,
            seq_len=cfg.eval_seq_len,
            stride=cfg.eval.stride,
            batch_seqs=cfg.eval.sliding_batch_seqs,
            dist=ctx.dist,
            device=ctx.device,
            autocast=ctx.autocast,
            temperature=cfg.eval.temperature,
        ),
    )

    def scorer():
        return SlidingScorer(
            model, seq_len=cfg.eval_seq_len, stride=cfg.eval.stride, temperature=cfg.eval.temperature
        )

    return stage_record(ctx, name, res, scorer, [t6], weights)


def stage_q_ttt(ctx: Session, weights: StageWeights, name: str) -> StageRecord:
    """q_ttt: the TTT of ``cfg.ttt`` on the round trip (plain sliding window with TTT off)."""
    if ctx.cfg.ttt.prequant_ablation and name in STAGES:
        raise ValueError(
            f"the NON-COMPLIANT pre-quant ablation cannot be recorded as stage {name!r}; "
            f"name it {stage_name('q_ttt', ctx.cfg)!r} (stage_name) or after the ablation"
        )
    model = ctx.model_with(weights.state)
    inputs = TTTInputs.from_config(
        model, ctx.val, ctx.target_bytes, ctx.cfg, dist=ctx.dist, device=ctx.device
    )
    res, t6 = evaluate_guarded(ctx, lambda: run_ttt(inputs)[0])
    probe_cfg = probe_config(ctx.cfg, ctx.cfg.eval.probe_tokens)
    return stage_record(ctx, name, res, lambda: ttt_scorer(model, probe_cfg), [t6], weights)


def stage_q_ngram(ctx: Session, weights: StageWeights, name: str) -> StageRecord | None:
    """q_ngram: sliding-window model log-probs mixed with the legal cache; rank 0 scores, the others wait
    and receive its record."""
    from pgolf_core.ngram import NgramScorer, WindowedTorchModel

    cfg, model = ctx.cfg, ctx.model_with(weights.state)
    stride = cfg.eval.stride or cfg.eval_seq_len

    def make_scorer() -> NgramScorer:
        lm = WindowedTorchModel(
            model, cfg.eval_seq_len, stride=stride, temperature=cfg.eval.temperature, autocast=ctx.autocast
        )
        return NgramScorer(lm, cfg.ngram)

    def evaluate() -> EvalResult:
        t0 = time.perf_counter()
        score = make_scorer().score_stream(np.asarray(ctx.val, dtype=np.int64))
        nbytes = ctx.target_bytes.total(ctx.val)
        return EvalResult.from_stream(score, nbytes, time.perf_counter() - t0, ctx.target_bytes.kind)

    return main_rank_stage(ctx, name, evaluate, make_scorer, weights)


STAGE_FNS: dict[str, StageFn] = {
    "pre": stage_checkpoint,
    "ema": stage_checkpoint,
    "q": stage_q,
    "q_sw": stage_q_sw,
    "q_ttt": stage_q_ttt,
    "q_ngram": stage_q_ngram,
    "q_tilt": stage_q_tilt,
    "q_ttt_tilt": stage_q_ttt_tilt,
}
