"""Depth recurrence (the loops), U-Net skips and two-lane residuals follow the records' layer lists
(#1394: 15 positions, #1493/#1855: 17; the two lanes of #1855 start at physical layer 8)."""

from __future__ import annotations

import pytest
import torch

from pgolf_core.config import load_config
from pgolf_core.config.model import LoopsConfig
from pgolf_core.model import layer_plan, loop_layers
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
def test_loop_layers_match_records(name, encoder, decoder):
    """With the loops on, the encoder/decoder lists and skip count are those the records logged."""
    plan = layer_plan(load_config(PARAMS / name).model, loops_on=True)
    assert (plan.encoder, plan.decoder) == (encoder, decoder)
    assert plan.num_skips == len(encoder)


def test_loops_off_uses_the_plain_layer_list():
    """With the loops off the plan is [0..L-1] split in half; only the first n skips apply."""
    plan = layer_plan(load_config(PARAMS / "record_1493.yaml").model, loops_on=False)
    assert plan.layers == tuple(range(11))
    assert (plan.num_encoder, plan.num_skips) == (5, 5)


def test_loop_layers_formula():
    """[0..s-1] + [s..e] * (count + 1) + [e+1..L-1]; no loops or loops off gives [0..L-1]."""
    assert loop_layers(6, LoopsConfig(start=2, end=3, count=1), True) == (0, 1, 2, 3, 2, 3, 4, 5)
    assert loop_layers(6, LoopsConfig(start=2, end=3, count=1), False) == tuple(range(6))
    assert loop_layers(6, LoopsConfig(start=2, end=3, count=0), True) == tuple(range(6))


def test_two_lane_starts_at_first_decoder_block_past_start_layer():
    """#1855: the two lanes begin at the decoder position of physical layer 8."""
    cfg = load_config(PARAMS / "record_1855.yaml").model
    on, off = layer_plan(cfg, True), layer_plan(cfg, False)
    assert on.layers[on.lane_start] == 8 and on.lane_start == 14
    assert off.layers[off.lane_start] == 8 and off.lane_start == 8
    early = layer_plan(tiny_cfg(residual={"parallel": {"kind": "two_lane", "start_layer": 0}}), True)
    assert early.lane_start == early.num_encoder  # never inside the encoder


def test_set_loops_changes_output_and_is_reversible():
    """set_loops(True) changes the logits; switching back restores them exactly."""
    model, ids = tiny_model(residual={"loops": {"start": 1, "end": 2, "count": 2}}), tokens()
    with torch.no_grad():
        off = model(ids)
        model.set_loops(True)
        assert model.loops_on
        on = model(ids)
        model.set_loops(False)
        again = model(ids)
    assert (on - off).abs().max() > 1e-4
    torch.testing.assert_close(again, off, rtol=0, atol=0)


def test_set_loops_is_a_no_op_without_loops():
    """Without model.residual.loops.count the switch stays off and the model computes the same function."""
    model, ids = tiny_model(), tokens()
    with torch.no_grad():
        off = model(ids)
        model.set_loops(True)
        assert not model.loops_on
        on = model(ids)
    torch.testing.assert_close(on, off, rtol=0, atol=0)


def test_loops_share_weights_and_skip_count_uses_loops_on():
    """The loops add no block parameters; skip_weights is sized by the looped plan."""
    model = tiny_model(num_layers=4, residual={"loops": {"start": 1, "end": 2, "count": 2}})
    assert len(model.blocks) == 4
    assert model.skip_weights.shape == (4, 64)  # 8 layer positions -> 4 encoder, 4 decoder
    assert tiny_model().skip_weights.shape == (2, 64)
