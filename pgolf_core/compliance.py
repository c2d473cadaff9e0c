"""Mechanical compliance checks (compliance.md section 5), each returning a ``stages.Verdict``.

The scorer checks work through the ``pgolf_core.scoring.Scorer`` interface alone (``score_stream``,
``predictive`` and the ``ScoreEvents`` it reports), so any evaluation path, including one a user plugs
in, can be run through them:

    T1   future perturbation   scores at positions <= t do not move when every token after t changes
    T1b  target independence   p_t(.) is the same whether x_t = a or x_t = b
    T2   normalization         p_t >= 0, |sum_v p_t(v) - 1| <= 1e-6, and the scored NLL is -ln p_t(x_t)
    T3   uniform floor         on i.i.d. uniform tokens, mean NLL >= ln V - 4 SE
    T4   exactly once          the scored positions are exactly {1, ..., N-1}, once each
    T5   score before update   every position a state update uses was already scored

    verdicts = run_scorer_checks(scorer, tokens)           # T1, T1b, T2, T3, T4, T5

The run checks: T6 (``data_tripwire`` / ``check_data_access``: no validation shard opened while training
or quantizing, no training shard while evaluating), T7 (``check_artifact_size``), T8
(``check_train_time``, ``check_eval_time``), T9 (``check_data_split``: canonical document count, no
validation document copied into training shards), T10 (``check_byte_recount``). ``attach_verdicts`` puts
them on a ``StageRecord``. What each check catches, and what it cannot (T1 passes the #909 cache; T5
sees only the updates a scorer reports), is in compliance.md section 4; tests/compliance holds one
fixture per known illegal pattern and asserts which check flags it.
"""

from __future__ import annotations

import builtins
import contextlib
import fnmatch
import io
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pgolf_core.scoring import ScoreEvents, Scorer, StreamScore
from pgolf_core.stages import StageRecord, Verdict

ARTIFACT_CAP_BYTES = 16_000_000  # decimal, code + compressed model (R1)
TIME_LIMIT_SECONDS = 600.0  # training, and separately evaluation, on 8xH100 SXM (R1, R17)
NORM_TOL = 1e-6  # T2: |sum_v p(v) - 1|
Z_FLOOR = 4.0  # T3: mean NLL >= ln V - 4 SE


# --------------------------------------------------------------------------------------------------
# Recording what a scorer reports
# --------------------------------------------------------------------------------------------------


class EventLog(ScoreEvents):
    """Records ``scored`` / ``updated`` events: per-position score counts and score-before-update
    violations (an update using a position that had not been scored at that moment)."""

    def __init__(self, num_tokens: int):
        self.scored_count = np.zeros(num_tokens, dtype=np.int64)
        self.scored_events = 0
        self.update_kinds: Counter[str] = Counter()
        self.violations: list[tuple[str, int, int]] = []  # (kind, first unscored position, how many)

    def scored(self, positions: np.ndarray) -> None:
        np.add.at(self.scored_count, np.asarray(positions, dtype=np.int64), 1)
        self.scored_events += 1

    def updated(self, positions: np.ndarray, kind: str) -> None:
        positions = np.asarray(positions, dtype=np.int64)
        self.update_kinds[kind] += 1
        unscored = positions[self.scored_count[positions] == 0]
        if unscored.size:
            self.violations.append((kind, int(unscored.min()), int(unscored.size)))


@dataclass
class ScoredRun:
    """One ``score_stream`` pass with its events, shared by T1 (baseline), T2 (consistency), T4, T5."""

    tokens: np.ndarray
    score: StreamScore
    log: EventLog


def record_run(scorer: Scorer, tokens: np.ndarray) -> ScoredRun:
    tokens = np.asarray(tokens, dtype=np.int64)
    log = EventLog(tokens.size)
    return ScoredRun(tokens, scorer.score_stream(tokens, log), log)


def _run_for(scorer: Scorer, tokens: np.ndarray, run: ScoredRun | None) -> ScoredRun:
    if run is not None and np.array_equal(run.tokens, tokens):
        return run
    return record_run(scorer, tokens)


def _vocab(scorer: Scorer, vocab_size: int | None) -> int:
    V = int(getattr(scorer, "vocab_size", 0) or 0)
    if vocab_size is not None and V and vocab_size != V:
        raise ValueError(f"vocab_size {vocab_size} differs from the scorer's {V}")
    if not (vocab_size or V):
        raise ValueError("the scorer has no vocab_size; pass vocab_size=")
    return int(vocab_size or V)


# --------------------------------------------------------------------------------------------------
# Scorer checks: T1, T1b, T2, T3, T4, T5
# --------------------------------------------------------------------------------------------------


def default_cuts(n: int) -> list[int]:
    """Cut points for T1: one near the start, then spread, off any power-of-two grid."""
    cuts = {min(17, n - 2), n // 4 + 1, n // 2, (3 * n) // 4 - 1}
    return sorted(c for c in cuts if 1 <= c <= n - 2)


def check_future_perturbation(
    scorer: Scorer,
    tokens: np.ndarray,
    *,
    cuts: Sequence[int] | None = None,
    seed: int = 0,
    atol: float = 1e-6,
    run: ScoredRun | None = None,
    vocab_size: int | None = None,
) -> Verdict:
    """T1: for each cut t, replace every token after t by a different random token and rescore from
    scratch; the NLLs at positions 1..t must not move by more than ``atol`` nats.

    Catches pre-eval TTT, two-pass rescoring, caches updated before scoring, any lookahead
    (compliance.md T1). It does not catch the hashed-target cache: its timing is causal.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    V = _vocab(scorer, vocab_size)
    base = _run_for(scorer, tokens, run).score.nll
    cuts = [int(c) for c in cuts] if cuts is not None else default_cuts(tokens.size)
    rng = np.random.default_rng(seed)
    worst = (0.0, -1, -1)  # (|delta|, cut, position)
    for t in cuts:
        alt = tokens.copy()
        alt[t + 1 :] = (tokens[t + 1 :] + rng.integers(1, V, tokens.size - t - 1)) % V
        nll = scorer.score_stream(alt).nll
        d = np.abs(nll[1 : t + 1] - base[1 : t + 1])
        d = np.where(np.isnan(nll[1 : t + 1]) & np.isnan(base[1 : t + 1]), 0.0, d)
        d = np.where(np.isnan(d), np.inf, d)
        k = int(np.argmax(d))
        if d[k] > worst[0]:
            worst = (float(d[k]), t, k + 1)
    delta, t, pos = worst
    if delta <= atol:
        return Verdict(
            "T1",
            True,
            f"NLLs at positions <= t unchanged when every later token is replaced, "
            f"cuts {cuts}: max |delta| {delta:.3g} nats <= {atol:g}",
            delta,
            atol,
        )
    return Verdict(
        "T1",
        False,
        f"replacing the tokens after position {t} moved the NLL at position {pos} "
        f"by {delta:.4g} nats (limit {atol:g}): scores depend on future tokens",
        delta,
        atol,
    )


def check_target_independence(
    scorer: Scorer,
    tokens: np.ndarray,
    *,
    positions: Sequence[int] | None = None,
    n_positions: int = 4,
    seed: int = 0,
    atol: float = 1e-9,
    vocab_size: int | None = None,
) -> Verdict:
    """T1b: p_t(.) from ``predictive`` with x_t = a and with x_t = b (all else equal) must agree.

    Catches x_t-dependent gating (oracle gates #659, boundary flags of the target #1420 pre-fix; R5,
    R11) and any distribution built after looking at the target.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    V = _vocab(scorer, vocab_size)
    rng = np.random.default_rng(seed)
    if positions is None:
        positions = sorted(
            rng.choice(
                np.arange(1, tokens.size), size=min(n_positions, tokens.size - 1), replace=False
            ).tolist()
        )
    positions = [int(t) for t in positions]
    worst = (0.0, -1)
    for t in positions:
        alt = tokens.copy()
        alt[t] = (tokens[t] + int(rng.integers(1, V))) % V
        p_a = scorer.predictive(tokens, [t])[0]
        p_b = scorer.predictive(alt, [t])[0]
        d = float(np.max(np.abs(p_a - p_b)))
        if not d <= worst[0]:
            worst = (d if not math.isnan(d) else math.inf, t)
    delta, t = worst
    if delta <= atol:
        return Verdict(
            "T1b",
            True,
            f"p_t(.) identical for two values of x_t at positions {list(positions)}: "
            f"max |delta p| {delta:.3g} <= {atol:g}",
            delta,
            atol,
        )
    return Verdict(
        "T1b",
        False,
        f"the predictive distribution at position {t} changed by up to {delta:.4g} "
        f"(limit {atol:g}) when only x_{t} changed: it reads the target",
        delta,
        atol,
    )


def check_normalization(
    scorer: Scorer,
    tokens: np.ndarray,
    *,
    positions: Sequence[int] | None = None,
    n_positions: int = 32,
    seed: int = 0,
    tol: float = NORM_TOL,
    consistency_atol: float = 1e-5,
    run: ScoredRun | None = None,
    vocab_size: int | None = None,
) -> Verdict:
    """T2: at sampled positions p_t(v) >= 0 for every v, |sum_v p_t(v) - 1| <= tol over the full
    vocabulary, and the NLL that ``score_stream`` reported equals -ln p_t(x_t) (within
    ``consistency_atol`` nats), so the scored number is an entry of that normalized distribution.

    Catches target-keyed hashed caches (#909: sums 1.17..346) and max-over-experts oracle gates (C2).
    The consistency part keeps ``predictive`` honest: a scorer cannot check one distribution and score
    another.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    V = _vocab(scorer, vocab_size)
    rng = np.random.default_rng(seed)
    if positions is None:
        k = min(n_positions, tokens.size - 1)
        positions = np.unique(np.concatenate([[1, tokens.size - 1], rng.integers(1, tokens.size, k)]))
    positions = np.asarray(positions, dtype=np.int64)
    P = np.asarray(scorer.predictive(tokens, positions), dtype=np.float64)
    if P.shape != (positions.size, V):
        return Verdict(
            "T2",
            False,
            f"predictive returned shape {P.shape}, expected {(positions.size, V)} "
            f"(a distribution over the full vocabulary)",
            None,
            tol,
        )
    if not np.isfinite(P).all() or (P < 0).any():
        bad = int(np.flatnonzero(~(np.isfinite(P) & (P >= 0)).all(axis=1))[0])
        return Verdict(
            "T2", False, f"p_t has negative or non-finite entries at position {positions[bad]}", None, tol
        )
    sums = P.sum(axis=1)
    err = np.abs(sums - 1.0)
    i = int(np.argmax(err))
    if err[i] > tol:
        return Verdict(
            "T2",
            False,
            f"p_t sums to {sums.min():.6g}..{sums.max():.6g} over the {V}-token "
            f"vocabulary at {positions.size} positions (worst {sums[i]:.6g} at position "
            f"{positions[i]}; limit |sum - 1| <= {tol:g}): not a distribution",
            float(err[i]),
            tol,
        )
    nll = _run_for(scorer, tokens, run).score.nll[positions]
    with np.errstate(divide="ignore"):
        gap = np.abs(nll + np.log(P[np.arange(positions.size), tokens[positions]]))
    gap = np.where(np.isnan(gap), np.inf, gap)
    g = int(np.argmax(gap))
    if gap[g] > consistency_atol:
        with np.errstate(divide="ignore"):
            lp = -math.log(P[g, tokens[positions[g]]]) if P[g, tokens[positions[g]]] > 0 else math.inf
        return Verdict(
            "T2",
            False,
            f"rows sum to 1 (max error {err[i]:.2g}) but the scored NLL at position "
            f"{positions[g]} is {nll[g]:.6g} nats while -ln p_t(x_t) = {lp:.6g} (gap {gap[g]:.4g} > "
            f"{consistency_atol:g}): the score is not read from the checked distribution",
            float(err[i]),
            tol,
        )
    return Verdict(
        "T2",
        True,
        f"p_t >= 0 and |sum - 1| <= {err[i]:.2g} over all {V} tokens at "
        f"{positions.size} positions (limit {tol:g}); scored NLL = -ln p_t(x_t) within "
        f"{gap[g]:.2g} nats",
        float(err[i]),
        tol,
    )


def check_uniform_floor(
    scorer: Scorer,
    *,
    vocab_size: int | None = None,
    n_tokens: int = 20000,
    seed: int = 0,
    z: float = Z_FLOOR,
    tokens: np.ndarray | None = None,
) -> Verdict:
    """T3: score i.i.d. uniform tokens; require mean NLL >= ln V - z * SE.

    For any causal scorer whose scores come from normalized distributions, E[NLL_t | past] =
    ln V + KL(uniform || p_t) >= ln V, so a mean significantly below ln V proves leakage or missing
    normalization, whatever the mechanism (#909 measured 4.24 nats at its real load, compliance.md 7).
    """
    V = _vocab(scorer, vocab_size)
    if tokens is None:
        tokens = np.random.default_rng(seed).integers(0, V, n_tokens)
    nll = scorer.score_stream(np.asarray(tokens, dtype=np.int64)).nll
    vals = nll[~np.isnan(nll)]
    if vals.size < 2:
        return Verdict("T3", False, "fewer than two positions were scored on the uniform stream", None, None)
    mean = float(vals.mean())
    se = float(vals.std(ddof=1) / math.sqrt(vals.size))
    floor = math.log(V) - z * se
    zscore = (mean - math.log(V)) / se if se > 0 else 0.0
    ok = mean >= floor - 1e-12 * math.log(V)  # 1e-12: float rounding of a constant ln V stream
    what = "at or above" if ok else "below"
    return Verdict(
        "T3",
        ok,
        f"mean NLL {mean:.5f} nats on {vals.size} i.i.d. uniform tokens is {what} the floor "
        f"ln {V} - {z:g} SE = {floor:.5f} (SE {se:.2g}, z = {zscore:+.1f})"
        + ("" if ok else ": scores below chance on unpredictable data"),
        mean,
        floor,
    )


def check_exactly_once(scorer: Scorer, tokens: np.ndarray, *, run: ScoredRun | None = None) -> Verdict:
    """T4: the positions reported through ``ScoreEvents.scored`` form exactly {1..N-1}, each once, and
    the returned NLLs cover exactly those positions. Catches two-pass rescoring, reporting a later
    epoch, and the tail re-scoring of the common sliding-window schedule (compliance.md 0 item 8)."""
    run = _run_for(scorer, np.asarray(tokens, dtype=np.int64), run)
    counts = run.log.scored_count
    n = counts.size - 1
    if run.log.scored_events == 0:
        return Verdict(
            "T4",
            False,
            "the scorer reported no scored events; coverage cannot be verified "
            "(report ScoreEvents.scored as NLLs are committed)",
            0.0,
            float(n),
        )
    missing = int((counts[1:] == 0).sum())
    repeated = int((counts[1:] > 1).sum())
    extra = int(counts[0])
    covered = np.flatnonzero(~np.isnan(run.score.nll))
    nll_ok = covered.size == n and (covered == np.arange(1, n + 1)).all()
    if missing or repeated or extra or not nll_ok:
        parts = []
        if repeated:
            parts.append(f"{repeated} of {n} positions scored more than once (up to {counts.max()} times)")
        if missing:
            parts.append(f"{missing} positions never scored")
        if extra:
            parts.append("position 0 scored")
        if not nll_ok:
            parts.append(f"the NLL array covers {covered.size} positions")
        return Verdict(
            "T4",
            False,
            "; ".join(parts) + f" (expected each of 1..{n} exactly once)",
            float(counts[1:].sum()),
            float(n),
        )
    return Verdict(
        "T4",
        True,
        f"each of the {n} positions 1..{n} scored exactly once ({run.log.scored_events} scored events)",
        float(n),
        float(n),
    )


def check_score_before_update(scorer: Scorer, tokens: np.ndarray, *, run: ScoredRun | None = None) -> Verdict:
    """T5: every position named in an ``updated`` event had been scored when the update happened.

    Sees only the updates a scorer reports; unreported adaptation is caught by T1 instead."""
    run = _run_for(scorer, np.asarray(tokens, dtype=np.int64), run)
    log = run.log
    kinds = ", ".join(f"{k} x{c}" for k, c in sorted(log.update_kinds.items())) or "none"
    if log.violations:
        kind, pos, count = log.violations[0]
        total = sum(v[2] for v in log.violations)
        return Verdict(
            "T5",
            False,
            f"{len(log.violations)} update events used positions not yet scored "
            f"({total} position uses in all); first: '{kind}' used position {pos} and {count - 1} "
            f"more before they were scored (updates: {kinds})",
            float(total),
            0.0,
        )
    if not log.update_kinds:
        return Verdict(
            "T5",
            True,
            "no state updates reported (a static scorer; unreported adaptation is T1's to catch)",
            0.0,
            0.0,
        )
    return Verdict(
        "T5", True, f"every update used only already-scored positions (updates: {kinds})", 0.0, 0.0
    )


def run_scorer_checks(
    scorer: Scorer,
    tokens: np.ndarray,
    *,
    vocab_size: int | None = None,
    cuts: Sequence[int] | None = None,
    n_probe: int = 32,
    n_target_probe: int = 4,
    uniform_tokens: int = 20000,
    seed: int = 0,
) -> list[Verdict]:
    """T1, T1b, T2, T3, T4, T5 on any ``Scorer``; one scoring pass of ``tokens`` is shared.

    Cost: 1 + len(cuts) passes over ``tokens`` (T1), 2 * n_target_probe prefix passes (T1b), one
    prefix pass (T2) and one pass over ``uniform_tokens`` (T3). A tiny CPU config with a few
    thousand tokens finishes in seconds.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    V = _vocab(scorer, vocab_size)
    run = record_run(scorer, tokens)
    return [
        check_future_perturbation(scorer, tokens, cuts=cuts, seed=seed, run=run, vocab_size=V),
        check_target_independence(scorer, tokens, n_positions=n_target_probe, seed=seed, vocab_size=V),
        check_normalization(scorer, tokens, n_positions=n_probe, seed=seed, run=run, vocab_size=V),
        check_uniform_floor(scorer, vocab_size=V, n_tokens=uniform_tokens, seed=seed + 1),
        check_exactly_once(scorer, tokens, run=run),
        check_score_before_update(scorer, tokens, run=run),
    ]


# --------------------------------------------------------------------------------------------------
# T6: data tripwires
# --------------------------------------------------------------------------------------------------

#: file-name patterns that must not be opened in each phase (R1: no validation data while training or
#: quantizing, GPTQ calibration included (R15); no training data during evaluation)
FORBIDDEN_FILES = {
    "train": ("fineweb_val_*",),
    "quant": ("fineweb_val_*",),
    "eval": ("fineweb_train_*",),
}


class DataTripwire(RuntimeError):
    """A forbidden data file was opened. Not an OSError, so ``except OSError`` cannot swallow it."""


@dataclass
class TripLog:
    phase: str
    trips: list[tuple[str, str]] = field(default_factory=list)  # (function, path)


def _path_of(obj) -> str | None:
    if isinstance(obj, int):
        return None  # a file descriptor: whoever opened it went through the tripwire
    name = getattr(obj, "name", None) if not isinstance(obj, (str, bytes, os.PathLike)) else obj
    if name is None or isinstance(name, int):
        return None
    try:
        path = os.fspath(name)
    except TypeError:
        return None
    return os.fsdecode(path)


@contextmanager
def data_tripwire(phase: str) -> Iterator[TripLog]:
    """Make open / io.open / os.open / numpy.fromfile / numpy.memmap / numpy.load raise
    ``DataTripwire`` on files whose name matches ``FORBIDDEN_FILES[phase]``; every trip is also logged
    (so a trip swallowed by the code under test still fails the check).

    Patches module attributes process-wide for the duration: code that bound these functions before
    (``from numpy import fromfile``) is not covered, and neither are other processes.
    """
    if phase not in FORBIDDEN_FILES:
        raise ValueError(f"phase must be one of {sorted(FORBIDDEN_FILES)}, got {phase!r}")
    patterns = FORBIDDEN_FILES[phase]
    log = TripLog(phase)

    def guard(fname: str, obj) -> None:
        path = _path_of(obj)
        if path is None:
            return
        base = os.path.basename(path)
        if any(fnmatch.fnmatchcase(base, p) for p in patterns):
            log.trips.append((fname, path))
            raise DataTripwire(
                f"{fname}({path!r}) during {phase}: files matching {patterns} are off limits in this phase"
            )

    orig_open, orig_io_open, orig_os_open = builtins.open, io.open, os.open
    orig_fromfile, orig_memmap, orig_load = np.fromfile, np.memmap, np.load

    def t_open(file, *a, **k):
        guard("open", file)
        return orig_open(file, *a, **k)

    def t_os_open(path, *a, **k):
        guard("os.open", path)
        return orig_os_open(path, *a, **k)

    def t_fromfile(file, *a, **k):
        guard("numpy.fromfile", file)
        return orig_fromfile(file, *a, **k)

    def t_load(file, *a, **k):
        guard("numpy.load", file)
        return orig_load(file, *a, **k)

    class TMemmap(orig_memmap):  # a subclass keeps isinstance(x, np.memmap) true
        def __new__(cls, filename, *a, **k):
            guard("numpy.memmap", filename)
            return orig_memmap.__new__(cls, filename, *a, **k)

    builtins.open = io.open = t_open
    os.open = t_os_open
    np.fromfile, np.memmap, np.load = t_fromfile, TMemmap, t_load
    try:
        yield log
    finally:
        builtins.open, io.open, os.open = orig_open, orig_io_open, orig_os_open
        np.fromfile, np.memmap, np.load = orig_fromfile, orig_memmap, orig_load


def check_data_access(fn: Callable[[], object], *, phase: str) -> Verdict:
    """T6: run ``fn`` under ``data_tripwire(phase)``; fail if it opened (or tried to) a forbidden file."""
    with data_tripwire(phase) as log, contextlib.suppress(DataTripwire):  # trips are logged
        fn()
    pats = FORBIDDEN_FILES[phase]
    if log.trips:
        fname, path = log.trips[0]
        more = f" (and {len(log.trips) - 1} more)" if len(log.trips) > 1 else ""
        return Verdict(
            "T6",
            False,
            f"during {phase}, {fname} opened {path}{more}: files matching {pats} are "
            f"forbidden in this phase (R1, R15)",
            float(len(log.trips)),
            0.0,
        )
    return Verdict("T6", True, f"{phase}: no file matching {pats} was opened", 0.0, 0.0)


# --------------------------------------------------------------------------------------------------
# T7 artifact size, T8 time, T10 byte recount
# --------------------------------------------------------------------------------------------------


def code_bytes(paths: Iterable[str | os.PathLike]) -> int:
    """Total bytes of the given code files (as shipped: raw file sizes)."""
    from pgolf_core.code_bytes import file_bytes  # the one counting rule (each file once)

    return file_bytes(paths)


def loaded_local_files(root: str | os.PathLike) -> list[Path]:
    """Source files under ``root`` of every module imported so far (what a run actually loads; R18
    asks for all of them to be counted)."""
    root = Path(root).resolve()
    out = set()
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f:
            p = Path(f).resolve()
            if p.is_relative_to(root) and "site-packages" not in p.parts:
                out.add(p)
    return sorted(out)


def check_artifact_size(
    *,
    model_bytes: int,
    code_bytes: int,
    cap: int = ARTIFACT_CAP_BYTES,
    uncounted: Sequence[str | os.PathLike] = (),
) -> Verdict:
    """T7: code bytes + compressed model bytes <= cap (16,000,000 decimal, R1). ``uncounted`` lists
    code the run loaded but did not count; any such file fails the check (R18, conservative)."""
    total = int(model_bytes) + int(code_bytes)
    sizes = f"code {code_bytes:,} + model {model_bytes:,} = {total:,} bytes"
    if uncounted:
        names = ", ".join(str(u) for u in list(uncounted)[:5]) + (" ..." if len(uncounted) > 5 else "")
        return Verdict(
            "T7",
            False,
            f"{sizes}, but {len(uncounted)} loaded code files are not counted: {names} "
            f"(R18: count every file the run loads)",
            float(total),
            float(cap),
        )
    if total > cap:
        return Verdict(
            "T7", False, f"{sizes} exceeds the {cap:,}-byte cap by {total - cap:,}", float(total), float(cap)
        )
    return Verdict("T7", True, f"{sizes} <= {cap:,} (margin {cap - total:,} bytes)", float(total), float(cap))


def check_train_time(
    seconds: float,
    *,
    configured_cap: float | None,
    on_target_hardware: bool,
    hardware: str = "",
    limit: float = TIME_LIMIT_SECONDS,
) -> Verdict:
    """T8 (training): measured training wall-clock, quantization calibration included (R15), <= limit
    on 8xH100 SXM, and the script's own cap (``train.max_wallclock_seconds``) set to <= limit.

    Off the target hardware the measurement says nothing about the limit, so the verdict is n/a with
    the number; a configured cap above the limit fails everywhere.
    """
    if configured_cap and configured_cap > limit:
        return Verdict(
            "T8 train",
            False,
            f"the configured training cap is {configured_cap:g} s > {limit:g} s",
            float(configured_cap),
            limit,
        )
    cap_txt = f"cap {configured_cap:g} s" if configured_cap else "no wall-clock cap configured"
    if not on_target_hardware:
        return Verdict(
            "T8 train",
            None,
            f"measured {seconds:.1f} s of training on {hardware or 'this machine'} "
            f"({cap_txt}); the {limit:g} s limit is defined on 8xH100 SXM, so not checked here",
            float(seconds),
            limit,
        )
    ok = seconds <= limit
    return Verdict(
        "T8 train",
        ok,
        f"training took {seconds:.1f} s on {hardware or '8xH100'} "
        f"({'<=' if ok else '>'} {limit:g} s; {cap_txt})",
        float(seconds),
        limit,
    )


def check_eval_time(
    seconds: float,
    *,
    on_target_hardware: bool,
    hardware: str = "",
    timer_covers_precompute: bool = True,
    limit: float = TIME_LIMIT_SECONDS,
) -> Verdict:
    """T8 (evaluation): wall-clock from evaluation start to the final metric <= limit on 8xH100 SXM,
    including every validation-derived precompute (n-gram tables, hints; R17's conservative reading).
    """
    if not timer_covers_precompute:
        return Verdict(
            "T8 eval",
            False,
            f"eval timer ({seconds:.1f} s) does not cover the validation-derived "
            f"precompute (R17: it counts inside the {limit:g} s)",
            float(seconds),
            limit,
        )
    if not on_target_hardware:
        return Verdict(
            "T8 eval",
            None,
            f"measured {seconds:.1f} s of evaluation on {hardware or 'this machine'}; "
            f"the {limit:g} s limit is defined on 8xH100 SXM, so not checked here",
            float(seconds),
            limit,
        )
    ok = seconds <= limit
    return Verdict(
        "T8 eval",
        ok,
        f"evaluation took {seconds:.1f} s on {hardware or '8xH100'} "
        f"({'<=' if ok else '>'} {limit:g} s, precompute included)",
        float(seconds),
        limit,
    )


FINEWEB_VAL_DOCS = 50_000  # records.md A4: the first 50k documents of docs_selected.jsonl


def check_data_split(
    val_tokens: np.ndarray,
    train_files: Sequence[str | os.PathLike],
    *,
    expected_val_docs: int | None = None,
    expected_train_shards: int | None = None,
    k: int = 64,
    stride: int = 16,
    leak_fraction: float = 0.5,
    max_train_tokens: int | None = None,
    bos_id: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Verdict:
    """T9: the validation split is the canonical one and no validation document was copied into training.

    Document count (BOS tokens in the validation stream) against ``expected_val_docs`` (50,000 for the
    official shards; a leaky 10k-document build is the known failure), training shard count against
    ``expected_train_shards``, and verbatim overlap by hashed ``k``-token shingles
    (``pgolf_core.data.overlap``). ``max_train_tokens`` samples the training data (said in the reason).
    """
    from pgolf_core.data.overlap import val_train_overlap

    report = val_train_overlap(
        val_tokens, train_files, k=k, stride=stride, bos_id=bos_id, leak_fraction=leak_fraction,
        max_train_tokens=max_train_tokens, progress=progress,
    )
    problems = []
    if expected_val_docs is not None and report.val_docs != expected_val_docs:
        problems.append(f"validation has {report.val_docs:,} documents, expected {expected_val_docs:,}")
    if expected_train_shards is not None and len(train_files) != expected_train_shards:
        problems.append(f"{len(train_files)} training shards, expected {expected_train_shards}")
    if report.leaked:
        problems.append(f"validation documents {report.leaked[:10]} appear in the training data")
    sampled = "" if max_train_tokens is None else f" (a sample: the first {max_train_tokens:,} training tokens)"
    reason = "; ".join(problems + [report.summary() + sampled])
    return Verdict("T9", not problems, reason, float(len(report.leaked)), 0.0)


def recount_bytes(tokens: np.ndarray, sp, *, bos_id: int = 1) -> int:
    """UTF-8 bytes of the text the target tokens stand for, by decoding, per document.

    Documents are the runs between BOS tokens. Control, unknown and unused ids (and ids beyond the
    tokenizer) count 0 bytes, as the challenge counts them; a decode restarts after each, which drops
    the next piece's leading space exactly as the byte tables do (tests/data/test_tokenizer_bytes.py).
    Position 0 is context only: if the stream does not start with BOS, its bytes are left out.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    n_sp = int(sp.vocab_size())
    special = np.ones(max(n_sp, int(tokens.max(initial=0)) + 1), dtype=bool)
    for i in range(n_sp):
        special[i] = bool(sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))
    is_special = special[tokens]

    def run_bytes(run: np.ndarray) -> int:
        return len(sp.decode(run.tolist()).encode("utf-8")) if run.size else 0

    total = 0
    cuts = np.flatnonzero(is_special)
    starts = np.concatenate([[0], cuts + 1])
    ends = np.concatenate([cuts, [tokens.size]])
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if e <= s:
            continue
        if s == 0:  # the stream's first run: token 0 is not a target
            total += run_bytes(tokens[0:e]) - run_bytes(tokens[0:1])
        else:
            total += run_bytes(tokens[s:e])
    return total


def check_byte_recount(tokens: np.ndarray, sp, *, table_bytes: int, bos_id: int = 1) -> Verdict:
    """T10: the byte total used for bpb equals an independent recount from decoded text (R19)."""
    recount = recount_bytes(tokens, sp, bos_id=bos_id)
    docs = int((np.asarray(tokens) == bos_id).sum())
    if recount == table_bytes:
        return Verdict(
            "T10",
            True,
            f"decoded {docs} documents: {recount:,} UTF-8 bytes, equal to the table total",
            float(recount),
            float(table_bytes),
        )
    return Verdict(
        "T10",
        False,
        f"decoded {docs} documents: {recount:,} UTF-8 bytes, but bpb used {table_bytes:,} "
        f"({table_bytes - recount:+,}; {abs(table_bytes - recount) / max(recount, 1):.3%})",
        float(recount),
        float(table_bytes),
    )


# --------------------------------------------------------------------------------------------------
# Stage records
# --------------------------------------------------------------------------------------------------


def attach_verdicts(record: StageRecord, verdicts: Iterable[Verdict]) -> StageRecord:
    """Add verdicts to a stage record; a new verdict replaces an earlier one of the same check."""
    new = list(verdicts)
    names = {v.check for v in new}
    record.verdicts = [v for v in record.verdicts if v.check not in names] + new
    return record


def summarize(verdicts: Iterable[Verdict]) -> str:
    """One line per verdict: 'pass  T1  reason'."""
    return "\n".join(f"{v.label:4}  {v.check:8}  {v.reason}" for v in verdicts)
