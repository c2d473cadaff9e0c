"""Exactly once, and in order: T4 coverage and T5 score-before-update.

    T4   exactly once         every target position in the range committed once: no gap, no overlap
    T5   score before update  every position a state update uses was already scored

``check_coverage`` judges the evaluation's own record of what it committed (the target positions it
added to the loss sum, or a count per position), not a total and not what a scorer says about itself:
a plan with one overlap and one gap has the right count, and a scorer can report each re-scored
position once. ``check_exactly_once`` applies the same test to a scorer's ``ScoreEvents``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pgolf_core.compliance.events import ScoredRun, _run_for
from pgolf_core.scoring import Scorer
from pgolf_core.stages import Verdict


def coverage_problems(counts: np.ndarray, start: int) -> list[str]:
    """What is wrong with per-position commit ``counts`` of positions start, start + 1, ...: an empty
    list when each was committed exactly once."""
    counts = np.asarray(counts, dtype=np.int64)
    n = counts.size
    parts = []
    repeated = np.flatnonzero(counts > 1)
    missing = np.flatnonzero(counts == 0)
    if repeated.size:
        parts.append(
            f"{repeated.size} of {n} positions scored more than once (up to {counts.max()} times, "
            f"the first at position {int(repeated[0]) + start})"
        )
    if missing.size:
        parts.append(
            f"{missing.size} of {n} positions never scored (the first at position {int(missing[0]) + start})"
        )
    return parts


def check_coverage(
    *,
    expected: range | tuple[int, int],
    positions: Sequence[int] | np.ndarray | None = None,
    counts: Sequence[int] | np.ndarray | None = None,
    check: str = "T4 full",
) -> Verdict:
    """T4 from what an evaluation committed: every target position of ``expected`` (a ``range`` or
    ``(start, stop)``, stop exclusive; ``range(1, N)`` for a stream of N tokens) exactly once.

    Give either ``positions``, every committed target position as recorded where the NLL enters the
    loss sum (a repeat means it was summed twice; e.g. all windows' scored positions concatenated,
    over all ranks), or ``counts``, how many times each absolute position 0, 1, ... was committed (a
    coverage bitmap with counts). Fails on any gap, overlap or position outside the range, whatever the
    total; the reason names the first of each.
    """
    start, stop = (expected.start, expected.stop) if isinstance(expected, range) else expected
    start, stop = int(start), int(stop)
    if (positions is None) == (counts is None):
        raise ValueError("check_coverage: give exactly one of positions= or counts=")
    if positions is not None:
        pos = np.asarray(positions, dtype=np.int64).ravel()
        outside = pos[(pos < start) | (pos >= stop)]
        inside = pos[(pos >= start) & (pos < stop)]
        per = np.bincount(inside - start, minlength=stop - start) if stop > start else np.zeros(0, np.int64)
        total = int(pos.size)
    else:
        full = np.asarray(counts, dtype=np.int64).ravel()
        if (full < 0).any():
            raise ValueError("check_coverage: counts must be >= 0")
        per = np.zeros(stop - start, dtype=np.int64)
        lo, hi = min(start, full.size), min(stop, full.size)
        per[lo - start : hi - start] = full[lo:hi]
        out_idx = np.concatenate([np.arange(0, min(start, full.size)), np.arange(hi, full.size)])
        outside = np.repeat(out_idx, full[out_idx]) if out_idx.size else np.zeros(0, np.int64)
        total = int(full.sum())
    parts = coverage_problems(per, start)
    if outside.size:
        parts.append(
            f"{outside.size} commits outside {start}..{stop - 1} (the first at position {int(outside[0])})"
        )
    n = stop - start
    if parts:
        return Verdict(
            check,
            False,
            "; ".join(parts) + f" ({total:,} commits for {n:,} positions "
            f"{start}..{stop - 1}, expected each exactly once)",
            float(total),
            float(n),
        )
    return Verdict(
        check,
        True,
        f"each of the {n:,} positions {start}..{stop - 1} committed exactly once "
        "(checked per position, not by count)",
        float(total),
        float(n),
    )


def check_exactly_once(scorer: Scorer, tokens: np.ndarray, *, run: ScoredRun | None = None) -> Verdict:
    """T4: the positions a scorer reports through ``ScoreEvents.scored`` form exactly {1..N-1}, each once, and
    the returned NLLs cover exactly those positions. Catches two-pass rescoring, reporting a later
    epoch, and the tail re-scoring of the common sliding-window schedule (it re-scores the last
    ``stride`` positions once per truncated tail window)."""
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
    extra = int(counts[0])
    covered = np.flatnonzero(~np.isnan(run.score.nll))
    nll_ok = covered.size == n and (covered == np.arange(1, n + 1)).all()
    parts = coverage_problems(counts[1:], 1)
    if parts or extra or not nll_ok:
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
