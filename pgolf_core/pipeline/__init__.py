"""The post-training stages of a run, each a StageRecord with its compliance verdicts.

    run_stages(cfg, train_dir, out_dir)                     # from a notebook or a test, one process
    python -m pgolf_core.pipeline TRAIN_DIR --out DIR       # the same from a shell
    torchrun --standalone --nproc_per_node=8 -m pgolf_core.pipeline TRAIN_DIR --out DIR   # on a pod

Stages (pgolf_core.stages): ``pre`` (final raw weights) and ``ema`` (EMA weights) with standard
evaluation; ``q`` the artifact round trip (quantize the EMA weights when there are any, as the records
do, compress, write artifact.bin, read it back, dequantize) with standard evaluation; ``q_sw`` the same
weights with sliding-window evaluation (eval.stride > 0); ``q_ttt`` with legal score-first TTT
(ttt.enabled, or the marked NON-COMPLIANT pre-quant ablation); ``q_ngram`` sliding window mixed with the
legal n-gram cache (ngram.enabled; computed on rank 0); ``q_tilt`` sliding window with the token-only
n-gram tilt (eval.tilt.enabled, #2135); ``q_ttt_tilt`` the TTT with the tilt on its scored loss (both
enabled: #2135's score).

Every record carries verdicts: T4 exactly-once and T10 byte recount on the real evaluation; T6 (no
training shard opened during evaluation; no validation shard during quantization); T7 artifact size
(q stages); T8 train and eval time (n/a off 8xH100, with the measured seconds); and T1, T1b, T2, T3,
T4, T5 measured by running the stage's own scorer on a probe: ``eval.probe_tokens`` validation tokens
from ``eval.probe_windows`` seeded random places across the stream, reported in the reasons (TTT chunk
sizes scaled so the probe holds four chunks, so that updates happen).

Rooms: ``session`` (config, data, byte tables, the run's records), ``roundtrip`` (the weights a stage
evaluates, and the artifact round trip), ``verdicts`` (the checks every stage shares, and the record),
``stages`` (one function per stage, one signature: ``stage(session, weights, name) -> StageRecord``),
``driver`` (``run_stages`` and the command line).
"""

from pgolf_core.pipeline.driver import PipelineResult, default_stages, main, run_stages
from pgolf_core.pipeline.roundtrip import StageWeights, quantize_weights
from pgolf_core.pipeline.session import Session
from pgolf_core.pipeline.stages import (
    STAGE_FNS,
    StageFn,
    stage_checkpoint,
    stage_name,
    stage_q,
    stage_q_ngram,
    stage_q_sw,
    stage_q_ttt,
    standard_eval,
    standard_scorer,
)
from pgolf_core.pipeline.tilt_stage import stage_q_tilt, stage_q_ttt_tilt
from pgolf_core.pipeline.verdicts import (
    coverage_verdict,
    data_split_verdict,
    eval_time_verdict,
    evaluate_guarded,
    probe_config,
    probe_verdicts,
    stage_record,
)

__all__ = [
    "STAGE_FNS",
    "PipelineResult",
    "Session",
    "StageFn",
    "StageWeights",
    "coverage_verdict",
    "data_split_verdict",
    "default_stages",
    "eval_time_verdict",
    "evaluate_guarded",
    "main",
    "probe_config",
    "probe_verdicts",
    "quantize_weights",
    "run_stages",
    "stage_checkpoint",
    "stage_name",
    "stage_q",
    "stage_q_ngram",
    "stage_q_sw",
    "stage_q_tilt",
    "stage_q_ttt_tilt",
    "stage_q_ttt",
    "stage_record",
    "standard_eval",
    "standard_scorer",
]
