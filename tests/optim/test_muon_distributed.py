"""Muon's rank-strided update sharing (the challenge baseline's Muon) on a real 2-process gloo group."""

from __future__ import annotations

import torch

from tests.gloo import run_ranks
from tests.optim import _muon_dist_worker


def test_muon_two_ranks_bitwise_equal_one_process(tmp_path):
    """2 gloo ranks (each orthogonalizing every other matrix, one all-reduce in the communication dtype) = 1
    process, bitwise.
    """
    run_ranks(_muon_dist_worker.worker, 2, str(tmp_path))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same matmul kernels as the workers
    try:
        expected = _muon_dist_worker.run_problem()
    finally:
        torch.set_num_threads(threads)
    init, _ = _muon_dist_worker.make_problem()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert len(got) == len(expected) == 6
        for g, e in zip(got, expected):
            assert torch.equal(g, e)
    # The parameters did move: the comparison is not between two untouched copies.
    assert all(not torch.equal(e, p) for e, p in zip(expected, [p for group in init for p in group]))
