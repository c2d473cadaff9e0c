"""Which checks catch each known illegal family: the table a reader can trust, measured.

Every family should be caught by at least two independent checks, so that one check's sample (its
cuts, its probed positions) does not decide a verdict alone. Where that is not possible the table says
why. Legal scorers, deterministic or not, are caught by none.
"""

from __future__ import annotations

import pytest

from tests.compliance import test_scorer_checks as fixtures
from tests.compliance.adversaries import adversary_verdicts

CATCHES = {
    # the fixtures of illegal.py (tests/compliance/test_scorer_checks.py runs them)
    "hashed_target_909": {"T2", "T3"},
    "prequant_ttt": {"T1", "T1b", "T1c", "T3", "T5"},
    "oracle_gate_selected": {"T1b", "T3"},
    "oracle_gate_max": {"T2", "T3"},
    "two_pass": {"T1", "T1b", "T1c", "T3", "T4"},
    "tail_rescore": {"T4"},
    # the adversaries of adversaries.py
    "late_future": {"T1", "T1b"},
    "sparse_future": {"T1", "T1b", "T1c"},
    "built_around_committed": {"T1b"},
    "memo_leak": {"T1c", "T3"},
    "shared_memo": {"noise", "T1c", "T3"},
    "never_reset": {"T1", "T1b", "T1c", "T2", "T3"},
    "persisted_cache": {"T1c"},
    "late_future_jitter": {"T1", "T1b"},
    # legal, non-deterministic
    "jitter": set(),
    "shuffled": set(),
}

# Families one check alone can see, and why no second one can.
SINGLE = {
    # a static model's numbers are right; only the record of what was summed shows the repeats
    "tail_rescore": "T4",
    # it gates only on contexts seen before (uniform noise has none, so T3 cannot see it) and its rows
    # hold exactly the committed number (T2 cannot): only T1b's counterfactual row moves
    "built_around_committed": "T1b",
    # each instance is consistent with itself; only a scorer built after the others differs
    "persisted_cache": "T1c",
}


def _verdicts(name: str):
    return fixtures.verdicts(name) if name in fixtures.ILLEGAL else adversary_verdicts(name)


@pytest.mark.parametrize("name", sorted(CATCHES))
def test_each_family_is_caught_by_exactly_the_checks_in_the_table(name):
    vs = _verdicts(name)
    failed = {k for k, v in vs.items() if v.passed is False}
    assert failed == CATCHES[name], {k: vs[k].reason for k in failed ^ CATCHES[name]}


def test_every_illegal_family_is_caught_twice_where_possible():
    illegal = {k: v for k, v in CATCHES.items() if k not in ("jitter", "shuffled")}
    assert all(v for v in illegal.values())
    once = {k for k, v in illegal.items() if len(v - {"noise"}) < 2}
    assert once == set(SINGLE)
    assert all(CATCHES[k] == {c} for k, c in SINGLE.items())
