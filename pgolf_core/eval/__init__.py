"""Evaluation: the window plan, bits-per-byte evaluators and their results, and scorer adapters.

Modules: windows (which windows run, which targets each scores; rank shares; window batches),
result (``EvalResult``: the bpb formula, built from sums or from a scorer's stream; byte streams),
target_bytes (the denominator's source: tokenizer byte tables or the CaseOps sidecar, ``TargetBytes``),
bpb (NLL functions, float64 sums, standard / sliding / any-plan evaluation, predictive capture),
scorers (``Scorer`` adapters over a window plan), logprobs (models as the n-gram cache reads them:
``ModelLogprobs`` and its adapters). Device and autocast helpers: ``pgolf_core.runtime``.

    res = evaluate_sliding(model, val, luts, seq_len=2048, stride=64, batch_seqs=32, dist=dist, device=dev)
    res.bpb, res.stage_record("q_sw", artifact_bytes=total)
"""

from pgolf_core.eval.bpb import (
    Capture,
    NllFn,
    ScoreSums,
    device_target_bytes,
    evaluate_plan,
    evaluate_sliding,
    evaluate_standard,
    nll_with_temperature,
    resolve_nll,
    score_windows,
)
from pgolf_core.eval.logprobs import (
    FullStreamModel,
    ModelLogprobs,
    ModelScorer,
    UniformModel,
    UnigramModel,
    WindowedTorchModel,
)
from pgolf_core.eval.result import EvalResult, stream_byte_counts
from pgolf_core.eval.scorers import SlidingScorer, StandardScorer, WindowScorer, stream_score_from
from pgolf_core.eval.target_bytes import (
    BYTES_SOURCES,
    LutTargetBytes,
    SidecarTargetBytes,
    TargetBytes,
    as_target_bytes,
    load_target_bytes,
)
from pgolf_core.eval.windows import WindowPlan, device_tokens, rank_slice, window_batch, window_plan

__all__ = [
    "BYTES_SOURCES",
    "Capture",
    "EvalResult",
    "FullStreamModel",
    "LutTargetBytes",
    "ModelLogprobs",
    "ModelScorer",
    "NllFn",
    "ScoreSums",
    "SidecarTargetBytes",
    "SlidingScorer",
    "StandardScorer",
    "TargetBytes",
    "UniformModel",
    "UnigramModel",
    "WindowPlan",
    "WindowScorer",
    "WindowedTorchModel",
    "as_target_bytes",
    "device_target_bytes",
    "device_tokens",
    "evaluate_plan",
    "evaluate_sliding",
    "evaluate_standard",
    "load_target_bytes",
    "nll_with_temperature",
    "rank_slice",
    "resolve_nll",
    "score_windows",
    "stream_byte_counts",
    "stream_score_from",
    "window_batch",
    "window_plan",
]
