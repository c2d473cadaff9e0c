"""The calibration reserve: a number as configured, or sized from a measured Hessian pass ("auto")."""

from __future__ import annotations

import time

import pytest
import torch

from pgolf_core.config import QuantConfig
from pgolf_core.quant import collect_hessians
from pgolf_core.quant.calib import (
    RESERVE_MARGIN_S,
    RESERVE_SAFETY,
    CalibTiming,
    measure_calibration,
    reserve_seconds,
)
from tests.model.helpers import tiny_model


def test_a_number_is_the_reserve_and_auto_scales_the_measured_pass():
    """12 s stays 12 s; auto with 0.2 s per batch + 0.5 s fixed and 32 batches: 1.25 x 6.9 + 1 = 9.625 s."""
    assert reserve_seconds(QuantConfig()) == 12.0
    assert reserve_seconds(QuantConfig(calib_reserve_seconds=0.5), CalibTiming(9.0, 9.0)) == 0.5
    auto = QuantConfig(calib_reserve_seconds="auto", calib_batches=32)
    assert (RESERVE_SAFETY, RESERVE_MARGIN_S) == (1.25, 1.0)
    assert reserve_seconds(auto, CalibTiming(0.2, 0.5)) == pytest.approx(9.625)
    # #2135: 32 batches in 6.9 s on the pod -> a reserve of ~9.6 s, not its 0.5 s
    assert reserve_seconds(auto, CalibTiming(6.9 / 32, 0.0)) == pytest.approx(9.625)


def test_auto_without_a_measurement_or_with_self_generated_text_is_a_clear_error():
    with pytest.raises(ValueError, match="auto needs a measured calibration pass"):
        reserve_seconds(QuantConfig(calib_reserve_seconds="auto"))
    with pytest.raises(ValueError, match="calib_source='self' set a number"):
        reserve_seconds(QuantConfig(calib_reserve_seconds="auto", calib_source="self"), CalibTiming(1, 1))
    with pytest.raises(ValueError):
        QuantConfig(calib_reserve_seconds="soon")


def test_measured_timing_covers_a_real_collection():
    """measure_calibration times collect_hessians itself; the auto reserve for 6 batches covers 6 batches."""
    torch.set_num_threads(1)
    model = tiny_model()
    timing = measure_calibration(model, 4, 32, 64)
    assert timing.per_batch_s > 0 and timing.fixed_s >= 0
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 64, (4, 32), generator=g), None) for _ in range(6)]
    t0 = time.perf_counter()
    collect_hessians(model, batches)
    actual = time.perf_counter() - t0
    assert reserve_seconds(QuantConfig(calib_reserve_seconds="auto", calib_batches=6), timing) > actual
