"""Muon's rank-strided update sharing (records.md C2, BASE) on a real 2-process gloo group."""

from __future__ import annotations

import socket

import torch
import torch.multiprocessing as mp

from tests.optim import _muon_dist_worker

TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_muon_two_ranks_bitwise_equal_one_process(tmp_path):
    """2 gloo ranks (each orthogonalizing every other matrix, one all-reduce in the communication dtype) = 1 process, bitwise."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_muon_dist_worker.worker, args=(r, 2, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join()
    assert not alive, f"distributed Muon workers still running after {TIMEOUT_S} s"
    assert [p.exitcode for p in procs] == [0, 0]

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
