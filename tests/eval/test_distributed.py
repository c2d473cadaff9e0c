"""Sliding evaluation and TTT on a real 2-process gloo group equal one process."""

from __future__ import annotations

import numpy as np

from pgolf_core.dist import DistInfo
from tests.eval import _dist_worker
from tests.gloo import run_ranks


def test_two_gloo_ranks_equal_one_process(tmp_path):
    """2 ranks (windows / chunk sequences / documents split across them, float64 sums and the NLL
    stream all-reduced, TTT gradients averaged) give one process's numbers on both ranks."""
    run_ranks(_dist_worker.worker, 2, str(tmp_path))

    expected = _dist_worker.run_all(DistInfo())
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert set(got.files) == set(expected)
        for key, want in expected.items():
            if key.endswith(("tokens", "bytes")):
                assert int(got[key]) == int(want), key
            elif key.endswith("committed"):  # each rank's commits all-reduced: every target once
                assert np.array_equal(got[key], want) and (want[1:] == 1).all() and want[0] == 0, key
            elif key.startswith("sliding"):
                np.testing.assert_allclose(got[key], want, atol=1e-9, rtol=0, err_msg=key)
            else:  # TTT: the same steps, gradients summed in a different order
                np.testing.assert_allclose(got[key], want, atol=2e-5, rtol=0, err_msg=key)
