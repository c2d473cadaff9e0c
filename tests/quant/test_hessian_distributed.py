"""Hessians are all-reduced across ranks (the public records forgot this): a real 2-process gloo group."""

from __future__ import annotations

import torch

from pgolf_core.quant import collect_hessians
from tests.gloo import run_ranks
from tests.model.helpers import tiny_model
from tests.quant import _hessian_dist_worker


def test_hessian_allreduce_two_ranks_equal_one_process_on_all_batches(tmp_path):
    """2 gloo ranks on halves of the batches (unequal rows) = 1 process on all of them: sum, then / total
    rows.
    """
    run_ranks(_hessian_dist_worker.worker, 2, str(tmp_path))

    expected = collect_hessians(tiny_model(), _hessian_dist_worker.batches())
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert len(expected) == 25
    for g in got:
        assert g["rows"] == expected.rows and g["rows"]["tok_emb.weight"] == 8 * 20
        for name, h in expected.items():
            torch.testing.assert_close(g["h"][name], h, rtol=1e-5, atol=1e-7)
    # rank 0 alone saw 4 of 8 sequences: its local Hessian differs, so the all-reduce did something
    local = collect_hessians(tiny_model(), _hessian_dist_worker.batches()[0::2])
    assert not torch.allclose(local["blocks.0.mlp.up.weight"], expected["blocks.0.mlp.up.weight"], rtol=1e-3)
    # the reserve's timing is the slowest rank's, the same on every rank (all stop the loop together)
    assert got[0]["timing"] == got[1]["timing"] and got[0]["timing"].per_batch_s > 0
