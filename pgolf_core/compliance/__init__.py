"""Mechanical compliance checks, each returning a ``stages.Verdict``.

The scorer checks (``scorer_checks``) work through the ``pgolf_core.scoring.Scorer`` interface alone
(``score_stream``, ``predictive`` and the ``ScoreEvents`` it reports, recorded by ``events``), so any
evaluation path, including one a user plugs in, can be run through them:

    T1   future perturbation   scores at positions <= t do not move when every token after t changes
    T1b  target independence   p_t(.) is the same whether x_t = a or x_t = b
    T2   normalization         p_t >= 0, |sum_v p_t(v) - 1| <= 1e-6, and the scored NLL is -ln p_t(x_t)
    T3   uniform floor         on i.i.d. uniform tokens, mean NLL >= ln V - 4 SE
    T4   exactly once          the scored positions are exactly {1, ..., N-1}, once each
    T5   score before update   every position a state update uses was already scored

    verdicts = run_scorer_checks(scorer, tokens)           # T1, T1b, T2, T3, T4, T5

The data tripwire T6 (``tripwire``: ``data_tripwire`` / ``check_data_access``: no validation shard
opened while training or quantizing, no training shard while evaluating) and the run checks
(``run_checks``): T7 (``check_artifact_size``), T8 (``check_train_time``, ``check_eval_time``), T9
(``check_data_split``: canonical document count, no validation document copied into training shards),
T10 (``check_byte_recount``). ``stages.attach_verdicts`` puts them on a ``StageRecord``. What each
check cannot see (T1 passes the #909 cache; T5 sees only the updates a scorer reports) is said in its
docstring; tests/compliance holds one fixture per known illegal pattern and asserts which check flags it.
"""

from pgolf_core.compliance.causality import check_cross_call, check_future_perturbation
from pgolf_core.compliance.coverage import (
    check_coverage,
    check_exactly_once,
    check_score_before_update,
    coverage_problems,
)
from pgolf_core.compliance.distribution import (
    NORM_TOL,
    Z_FLOOR,
    PredictiveProbe,
    check_normalization,
    check_target_independence,
    check_uniform_floor,
    predictive_probe,
)
from pgolf_core.compliance.events import EventLog, ScoredRun, ScorerSource, record_run
from pgolf_core.compliance.probes import (
    NOISE_CAP,
    NOISE_FACTOR,
    PROBE_POSITIONS,
    T1_CUTS,
    NoiseFloor,
    check_noise,
    default_cuts,
    deterministic_algorithms,
    future_cuts,
    measure_noise,
    probe_offsets,
    probe_positions,
    probe_windows,
)
from pgolf_core.compliance.run_checks import (
    ARTIFACT_CAP_BYTES,
    FINEWEB_VAL_DOCS,
    TIME_LIMIT_SECONDS,
    check_artifact_size,
    check_byte_recount,
    check_data_split,
    check_eval_time,
    check_train_time,
    code_bytes,
    loaded_local_files,
)
from pgolf_core.compliance.scorer_checks import run_scorer_checks
from pgolf_core.compliance.tripwire import (
    FORBIDDEN_FILES,
    DataTripwire,
    TripLog,
    check_data_access,
    data_tripwire,
)
from pgolf_core.data.byte_recount import recount_bytes
from pgolf_core.stages import attach_verdicts, summarize

__all__ = [
    "ARTIFACT_CAP_BYTES",
    "FINEWEB_VAL_DOCS",
    "FORBIDDEN_FILES",
    "NOISE_CAP",
    "NOISE_FACTOR",
    "NORM_TOL",
    "PROBE_POSITIONS",
    "T1_CUTS",
    "TIME_LIMIT_SECONDS",
    "Z_FLOOR",
    "DataTripwire",
    "EventLog",
    "NoiseFloor",
    "PredictiveProbe",
    "ScoredRun",
    "ScorerSource",
    "TripLog",
    "attach_verdicts",
    "check_artifact_size",
    "check_byte_recount",
    "check_coverage",
    "check_cross_call",
    "check_data_access",
    "check_data_split",
    "check_eval_time",
    "check_exactly_once",
    "check_future_perturbation",
    "check_noise",
    "check_normalization",
    "check_score_before_update",
    "check_target_independence",
    "check_train_time",
    "check_uniform_floor",
    "code_bytes",
    "coverage_problems",
    "data_tripwire",
    "default_cuts",
    "deterministic_algorithms",
    "future_cuts",
    "loaded_local_files",
    "measure_noise",
    "predictive_probe",
    "probe_offsets",
    "probe_positions",
    "probe_windows",
    "record_run",
    "recount_bytes",
    "run_scorer_checks",
    "summarize",
]
