"""The stages: each evaluates one set of weights one way and returns a StageRecord with its verdicts.

``pre`` / ``ema`` evaluate a checkpoint; ``q`` and the ``q_*`` stages evaluate the artifact round trip
(``quantize_weights``) with standard, sliding-window, TTT or n-gram evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch.distributed as tdist

from pgolf_core.compliance import check_artifact_size, check_data_access, check_train_time
from pgolf_core.data.tokenizer_bytes import LN2
from pgolf_core.evaluate import (
    EvalResult,
    SlidingScorer,
    StandardScorer,
    evaluate_sliding,
    evaluate_standard,
    stream_byte_counts,
)
from pgolf_core.model import build_model
from pgolf_core.pipeline.session import Session
from pgolf_core.pipeline.verdicts import _evaluate, _probe_cfg, _record
from pgolf_core.quant import build_artifact, load_artifact
from pgolf_core.scoring import Scorer
from pgolf_core.stages import StageRecord, Verdict
from pgolf_core.train import load_checkpoint
from pgolf_core.ttt import run_ttt, ttt_scorer


def _standard(ctx: Session, model) -> EvalResult:
    return evaluate_standard(
        model, ctx.val, ctx.luts, seq_len=ctx.cfg.eval_seq_len, batch_tokens=ctx.cfg.eval.batch_tokens,
        dist=ctx.dist, device=ctx.device, autocast=ctx.autocast, temperature=ctx.cfg.eval.temperature,
    )


def _standard_scorer(ctx: Session, model) -> Callable[[], Scorer]:
    return lambda: StandardScorer(model, seq_len=ctx.cfg.eval_seq_len, temperature=ctx.cfg.eval.temperature)


def stage_weights(ctx: Session, stage: str, state: dict) -> StageRecord:
    """pre / ema: a checkpoint's weights, standard evaluation."""
    model = ctx.model_with(state)
    res, t6 = _evaluate(ctx, lambda: _standard(ctx, model))
    rec = _record(ctx, stage, res, _standard_scorer(ctx, model), t6)
    train_s = ctx.run.get("train_seconds")
    if train_s is not None:
        total = train_s + ctx.run.get("calib_seconds", 0.0)
        rec.verdicts.append(check_train_time(total, configured_cap=ctx.cfg.train.max_wallclock_seconds or None,
                                             on_target_hardware=ctx.on_target, hardware=ctx.hardware))
    return rec


def quantize_weights(ctx: Session, state: dict) -> tuple[dict, Verdict, Verdict, dict]:
    """Quantize + compress + write artifact.bin, read it back: (dequantized state, T7, T6, accounting)."""
    hessians = None
    h_path = ctx.train_dir / "checkpoints" / "hessians.pt"
    if h_path.is_file():
        hessians = load_checkpoint(h_path)
    structure = build_model(ctx.cfg.model, device="cpu")
    box = []
    t6 = check_data_access(lambda: box.append(build_artifact(state, ctx.cfg.quant, model=structure, hessians=hessians)),
                           phase="quant")
    if not box:
        raise RuntimeError(f"quantization aborted by the data tripwire: {t6.reason}")
    art = box[0]
    path = ctx.out_dir / "artifact.bin"
    if ctx.dist.is_main:
        art.save(path)
    if ctx.dist.distributed and tdist.is_initialized():
        tdist.barrier()
    q_state = load_artifact(path)  # the round trip goes through the file, as a reader would
    t7 = check_artifact_size(model_bytes=art.model_bytes, code_bytes=art.code_bytes, cap=art.cap)
    accounting = {"model_bytes": art.model_bytes, "code_bytes": art.code_bytes, "total_bytes": art.total_bytes,
                  "margin": art.margin, "over_cap": art.over_cap, "compressor": art.compressor,
                  "candidates": art.details.get("candidates", {})}
    return q_state, t7, t6, accounting


def stage_q(ctx: Session, q_state: dict, t7: Verdict, t6q: Verdict, total_bytes: int) -> StageRecord:
    model = ctx.model_with(q_state)
    res, t6 = _evaluate(ctx, lambda: _standard(ctx, model))
    rec = _record(ctx, "q", res, _standard_scorer(ctx, model), t6, t7, total_bytes)
    rec.verdicts.insert(3, Verdict("T6 quant", t6q.passed, t6q.reason, t6q.measured, t6q.limit))
    return rec


def stage_q_sw(ctx: Session, q_state: dict, t7: Verdict, total_bytes: int) -> StageRecord:
    cfg, model = ctx.cfg, ctx.model_with(q_state)
    res, t6 = _evaluate(ctx, lambda: evaluate_sliding(
        model, ctx.val, ctx.luts, seq_len=cfg.eval_seq_len, stride=cfg.eval.stride, batch_seqs=cfg.eval.sliding_batch_seqs,
        dist=ctx.dist, device=ctx.device, autocast=ctx.autocast, temperature=cfg.eval.temperature))
    scorer = lambda: SlidingScorer(model, seq_len=cfg.eval_seq_len, stride=cfg.eval.stride,
                                   temperature=cfg.eval.temperature)
    return _record(ctx, "q_sw", res, scorer, t6, t7, total_bytes)


def stage_q_ttt(ctx: Session, q_state: dict, t7: Verdict, total_bytes: int) -> StageRecord:
    model = ctx.model_with(q_state)
    res, t6 = _evaluate(ctx, lambda: run_ttt(model, ctx.val, ctx.luts, ctx.cfg, dist=ctx.dist, device=ctx.device)[0])
    probe_cfg = _probe_cfg(ctx.cfg, ctx.cfg.eval.probe_tokens)
    rec = _record(ctx, "q_ttt", res, lambda: ttt_scorer(model, probe_cfg), t6, t7, total_bytes)
    if ctx.cfg.ttt.prequant_ablation:
        rec.stage = "q_ttt_prequant_NONCOMPLIANT"
    return rec


def stage_q_ngram(ctx: Session, q_state: dict, t7: Verdict, total_bytes: int) -> StageRecord | None:
    """Sliding-window model log-probs mixed with the legal cache; rank 0 scores, the others wait."""
    from pgolf_core.ngram import NgramScorer, WindowedTorchModel

    cfg, model = ctx.cfg, ctx.model_with(q_state)
    stride = cfg.eval.stride or cfg.eval_seq_len

    def make_scorer() -> NgramScorer:
        lm = WindowedTorchModel(model, cfg.eval_seq_len, stride=stride, temperature=cfg.eval.temperature,
                                autocast=ctx.autocast)
        return NgramScorer(lm, cfg.ngram)

    def evaluate() -> EvalResult:
        t0 = time.perf_counter()
        score = make_scorer().score_stream(np.asarray(ctx.val, dtype=np.int64))
        nbytes = int(stream_byte_counts(ctx.val, ctx.luts).sum())
        loss_sum = float(np.nansum(score.nll))
        n = int(np.count_nonzero(~np.isnan(score.nll)))
        info = {k: v for k, v in score.info.items() if isinstance(v, (int, float, str, dict))}
        return EvalResult(loss=loss_sum / n, bpb=loss_sum / (LN2 * nbytes), tokens=n, bytes=nbytes,
                          seconds=time.perf_counter() - t0, info=info)

    rec = None
    if ctx.dist.is_main:
        res, t6 = _evaluate(ctx, evaluate)
        rec = _record(ctx, "q_ngram", res, make_scorer, t6, t7, total_bytes)
    if ctx.dist.distributed and tdist.is_initialized():
        box = [rec]
        tdist.broadcast_object_list(box, src=0)
        rec = box[0]
    return rec
