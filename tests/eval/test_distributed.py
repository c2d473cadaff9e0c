"""Sliding evaluation and TTT on a real 2-process gloo group equal one process."""

from __future__ import annotations

import socket

import numpy as np
import torch.multiprocessing as mp

from pgolf_core.dist import DistInfo
from tests.eval import _dist_worker

TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_equal_one_process(tmp_path):
    """2 ranks (windows / chunk sequences / documents split across them, float64 sums and the NLL
    stream all-reduced, TTT gradients averaged) give one process's numbers on both ranks."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_dist_worker.worker, args=(r, 2, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join()
    assert not alive, f"evaluation workers still running after {TIMEOUT_S} s"
    assert [p.exitcode for p in procs] == [0, 0]

    expected = _dist_worker.run_all(DistInfo())
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert set(got.files) == set(expected)
        for key, want in expected.items():
            if key.endswith(("tokens", "bytes")):
                assert int(got[key]) == int(want), key
            elif key.startswith("sliding"):
                np.testing.assert_allclose(got[key], want, atol=1e-9, rtol=0, err_msg=key)
            else:  # TTT: the same steps, gradients summed in a different order
                np.testing.assert_allclose(got[key], want, atol=2e-5, rtol=0, err_msg=key)
