"""Hessians are all-reduced across ranks (the public records forgot this): a real 2-process gloo group."""

from __future__ import annotations

import socket

import torch
import torch.multiprocessing as mp

from pgolf_core.quant import collect_hessians
from tests.model.helpers import tiny_model
from tests.quant import _hessian_dist_worker

TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hessian_allreduce_two_ranks_equal_one_process_on_all_batches(tmp_path):
    """2 gloo ranks on halves of the batches (unequal rows) = 1 process on all of them: sum, then / total rows."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(target=_hessian_dist_worker.worker, args=(r, 2, port, str(tmp_path))) for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join()
    assert not alive, f"Hessian workers still running after {TIMEOUT_S} s"
    assert [p.exitcode for p in procs] == [0, 0]

    expected = collect_hessians(tiny_model(), _hessian_dist_worker.batches())
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert len(expected) == 25
    for g in got:
        assert g["rows"] == expected.rows and g["rows"]["tok_emb.weight"] == 8 * 20
        for name, h in expected.items():
            torch.testing.assert_close(g["h"][name], h, rtol=1e-5, atol=1e-7)
    # rank 0 alone saw 4 of 8 sequences: its local Hessian differs, so the all-reduce did something
    local = collect_hessians(tiny_model(), _hessian_dist_worker.batches()[0::2])
    assert not torch.allclose(local["blocks.0.mlp.up.weight"], expected["blocks.0.mlp.up.weight"], rtol=1e-3)
