"""The pipeline's probe: windows at seeded random offsets across the whole validation stream, checked
with the stage's scorer factory, offsets and seconds in every reason."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

from pgolf_core.config import config_from_dict
from pgolf_core.dist import DistInfo
from pgolf_core.pipeline.verdicts import probe_stream, probe_verdicts
from tests.compliance.adversaries import CountsScorer, V, _from_future
from tests.ngram.helpers import phrase_stream

MARK = V - 1  # a token that occurs only after the first quarter of the validation stream
N_VAL, CLEAN = 40_000, 10_000


class LateContent(CountsScorer):
    """Reads the next 64 tokens wherever the previous token is ``MARK``: content-keyed, so a probe
    taken from the start of validation (where there is no MARK) never sees it."""

    name = "late_content"

    def extra(self, tokens, j):
        return _from_future(self.p_model, tokens[j + 1 : j + 65]) if tokens[j - 1] == MARK else None


@pytest.fixture(scope="module")
def val() -> np.ndarray:
    v = phrase_stream(N_VAL, V - 1, seed=3)  # tokens 0..V-2
    rng = np.random.default_rng(4)
    late = CLEAN + np.flatnonzero(rng.random(N_VAL - CLEAN) < 0.1)
    v[late] = MARK
    return v


def ctx_for(val: np.ndarray, **probe) -> SimpleNamespace:
    cfg = config_from_dict({"model": {"vocab_size": V}, "eval": {"probe_tokens": 512, **probe}})
    return SimpleNamespace(cfg=cfg, dist=DistInfo(), val=val)


def offsets_in(reason: str) -> list[int]:
    m = re.search(r"at validation offsets ([\d, ]+?) \(seed", reason)
    assert m, reason
    return [int(x.replace(",", "")) for x in m.group(1).split(", ")]


def test_probe_stream_is_the_windows_concatenated_one_per_quarter(val):
    probe, offsets, width = probe_stream(val, 512, n_windows=4, seed=0)
    assert width == 129 and probe.size == 4 * 129 and len(offsets) == 4
    for i, o in enumerate(offsets):  # each window inside its own quarter, the tokens at its offset
        assert i * N_VAL // 4 <= o and o + width <= (i + 1) * N_VAL // 4
        assert np.array_equal(probe[i * width : (i + 1) * width], val[o : o + width])
    again, same, _ = probe_stream(val, 512, n_windows=4, seed=0)
    assert same == offsets and np.array_equal(again, probe)
    assert probe_stream(val, 512, n_windows=4, seed=1)[1] != offsets
    # A stream too short for the windows asked: fewer of them, never a window past the end.
    short, offs, w = probe_stream(val[:300], 512, n_windows=4, seed=0)
    assert len(offs) == 2 and w == 129 and short.size == 2 * 129


def test_a_cheat_seen_only_late_in_validation_fails_t1_and_the_reasons_say_where(val):
    assert not (val[:CLEAN] == MARK).any()  # a probe of the first tokens never sees the cheat
    verdicts = {v.check: v for v in probe_verdicts(ctx_for(val), LateContent)}
    assert list(verdicts) == ["noise", "T1", "T1b", "T1c", "T2", "T3", "T4", "T5"]
    assert verdicts["T1"].passed is False, verdicts["T1"].reason
    offsets = offsets_in(verdicts["T1"].reason)
    assert len(offsets) == 4 and offsets[-1] >= 3 * N_VAL // 4 and "4 x 129 tokens" in verdicts["T1"].reason
    for v in verdicts.values():  # every reason: where the probe lay, and the check's seconds
        assert offsets_in(v.reason) == offsets and re.search(r", \d+\.\d\d s", v.reason)
    assert re.search(r"\d+\.\d\d s of \d+\.\d\d s for all the checks", verdicts["noise"].reason)
    # The factory reached the checks: the noise floor comes from two fresh scorers.
    assert "two fresh scorers from the factory" in verdicts["noise"].reason


def test_the_legal_scorer_passes_every_probe_check_and_the_seed_moves_the_probe(val):
    verdicts = probe_verdicts(ctx_for(val, probe_seed=5, probe_cuts=4), CountsScorer)
    assert [v.check for v in verdicts if v.passed is not True] == []
    assert "(seed 5)" in verdicts[0].reason
    assert offsets_in(verdicts[0].reason) == probe_stream(val, 512, n_windows=4, seed=5)[1]
    assert "4 cuts (seed 5)" in verdicts[1].reason  # eval.probe_cuts and eval.probe_seed reach T1
    skipped = probe_verdicts(ctx_for(val, probe_tokens=0), CountsScorer)
    assert [(v.check, v.passed) for v in skipped] == [("T1-T5", None)]
