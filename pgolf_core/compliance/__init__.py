"""Mechanical compliance checks, each returning a ``stages.Verdict``.

The scorer checks work through the ``pgolf_core.scoring.Scorer`` interface alone (``score_stream``,
``predictive`` and the ``ScoreEvents`` it reports, recorded by ``events``), so any evaluation path,
including one a user plugs in, can be run through them:

    noise  the scorer's own noise floor (identical input, two fresh scorers)          probes.py
    T1   future perturbation   scores at positions <= t do not move when every        causality.py
                               token after t changes (seeded cuts over the whole probe)
    T1c  state across calls    the same stream scores the same after other calls      causality.py
    T1b  target independence   p_t(.) unchanged when x_t and the future change        distribution.py
    T2   normalization         p_t >= 0, sum 1, and the scored NLL is -ln p_t(x_t)    distribution.py
                               (T1b and T2 on the same 32+ positions)
    T3   uniform floor         i.i.d. uniform tokens: mean NLL >= ln V - 4 SE, twice  distribution.py
    T4   exactly once          every target position committed once                   coverage.py
    T5   score before update   every position a state update uses was already scored  coverage.py

    verdicts = run_scorer_checks(make_scorer, tokens)       # scorer_checks.py; a factory or a Scorer

``check_coverage`` is T4 for an evaluation's own record of committed positions, ``probe_windows``
places probes across a whole validation stream. The data tripwire T6 (``tripwire``: no validation
shard opened while training or quantizing, no training shard while evaluating) and the run checks
(``run_checks``): T7 (``check_artifact_size``), T8 (``check_train_time``, ``check_eval_time``), T9
(``check_data_split``: canonical document count, no validation document copied into training shards),
T10 (``check_byte_recount``). ``stages.attach_verdicts`` puts them on a ``StageRecord``. What each
check cannot see is said in its docstring; tests/compliance holds the known illegal patterns and
adversaries written for the checks' blind spots, and a table of which checks catch each.
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
