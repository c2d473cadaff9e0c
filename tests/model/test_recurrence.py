"""Depth recurrence, U-Net skips and two-lane residuals follow the layer lists of records.md B6/B8/B9."""

from __future__ import annotations

import pytest
import torch

from pgolf_core.config import load_config
from pgolf_core.model import layer_plan, virtual_layers
from tests.conftest import REPO
from tests.model.helpers import tiny_cfg, tiny_model, tokens

PARAMS = REPO / "params" / "h100x8"


@pytest.mark.parametrize(
    "name, encoder, decoder",
    [
        ("record_1394.yaml", (0, 1, 2, 3, 4, 5, 4), (5, 4, 5, 6, 7, 8, 9, 10)),
        ("record_1493.yaml", (0, 1, 2, 3, 4, 5, 3, 4), (5, 3, 4, 5, 6, 7, 8, 9, 10)),
        ("record_1855.yaml", (0, 1, 2, 3, 4, 5, 3, 4), (5, 3, 4, 5, 6, 7, 8, 9, 10)),
    ],
)
def test_recurrence_virtual_layers_match_records(name, encoder, decoder):
    """With looping on, the encoder/decoder lists and skip count are those of records.md B8/B6."""
    plan = layer_plan(load_config(PARAMS / name).model, looping=True)
    assert (plan.encoder, plan.decoder) == (encoder, decoder)
    assert plan.num_skips == len(encoder)


def test_recurrence_off_uses_the_plain_layer_list():
    """With looping off the plan is [0..L-1] split in half; only the first n skips apply."""
    plan = layer_plan(load_config(PARAMS / "record_1493.yaml").model, looping=False)
    assert plan.layers == tuple(range(11))
    assert (plan.num_encoder, plan.num_skips) == (5, 5)


def test_recurrence_virtual_layers_formula():
    """[0..s-1] + [s..e] * (num_loops + 1) + [e+1..L-1]; no loops or looping off gives [0..L-1]."""
    assert virtual_layers(6, 2, 3, 1, True) == (0, 1, 2, 3, 2, 3, 4, 5)
    assert virtual_layers(6, 2, 3, 1, False) == tuple(range(6))
    assert virtual_layers(6, 2, 3, 0, True) == tuple(range(6))


def test_two_lane_starts_at_first_decoder_block_past_start_layer():
    """#1855: the two lanes begin at the virtual position of physical layer 8 in the decoder."""
    cfg = load_config(PARAMS / "record_1855.yaml").model
    on, off = layer_plan(cfg, True), layer_plan(cfg, False)
    assert on.layers[on.lane_start] == 8 and on.lane_start == 14
    assert off.layers[off.lane_start] == 8 and off.lane_start == 8
    early = layer_plan(tiny_cfg(parallel_residual="two_lane", parallel_start_layer=0), True)
    assert early.lane_start == early.num_encoder  # never inside the encoder


def test_set_looping_changes_output_and_is_reversible():
    """set_looping(True) changes the logits; switching back restores them exactly."""
    model, ids = tiny_model(loop_start=1, loop_end=2, num_loops=2), tokens()
    with torch.no_grad():
        off = model(ids)
        model.set_looping(True)
        assert model.looping
        on = model(ids)
        model.set_looping(False)
        again = model(ids)
    assert (on - off).abs().max() > 1e-4
    torch.testing.assert_close(again, off, rtol=0, atol=0)


def test_set_looping_is_a_no_op_without_loops():
    """Without num_loops the flag flips but the model computes the same function."""
    model, ids = tiny_model(), tokens()
    with torch.no_grad():
        off = model(ids)
        model.set_looping(True)
        on = model(ids)
    torch.testing.assert_close(on, off, rtol=0, atol=0)


def test_recurrence_shares_weights_and_skip_count_uses_looping_on():
    """Looping adds no block parameters; skip_weights is sized by the looped plan."""
    model = tiny_model(num_layers=4, loop_start=1, loop_end=2, num_loops=2)
    assert len(model.blocks) == 4
    assert model.skip_weights.shape == (4, 64)  # 8 virtual layers -> 4 encoder, 4 decoder
    assert tiny_model().skip_weights.shape == (2, 64)
