"""LR multiplier and Muon momentum schedules, checked at hand-computed points."""

from __future__ import annotations

import pytest

from pgolf_core.config import OptimConfig, TrainConfig
from pgolf_core.optim import lr_multiplier, muon_momentum_at


def _train(**kw) -> TrainConfig:
    return TrainConfig(**{"iterations": 1000, "warmdown_iters": 200, "max_wallclock_seconds": 0.0, **kw})


@pytest.mark.parametrize(
    "step, expected",
    [(0, 1.0), (799, 1.0), (800, 1.0), (850, 0.75), (900, 0.5), (999, 0.005), (1000, 0.0), (1100, 0.0)],
)
def test_lr_multiplier_iteration_warmdown_without_cap(step, expected):
    """No cap: (iterations - step) / warmdown_iters over the last 200 of 1000 steps, 1 before, 0 after."""
    assert lr_multiplier(step, elapsed_s=123.0, train=_train()) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "step, elapsed_s, expected",
    [
        (0, 0.0, 1.0),  # no steps yet: W = 0 < R
        (100, 60.0, 1.0),  # s = 0.6, W = 120, R = 540
        (800, 475.0, 1.0),  # s = 0.59375, W = 118.75, R = 125 > W
        (800, 500.0, 0.8),  # s = 0.625, W = 125, R = 100
        (900, 570.0, 30.0 / (200 * 570.0 / 900)),  # s = 0.6333, W = 126.67, R = 30 -> 0.23684
        (950, 600.0, 0.0),  # time spent
        (990, 650.0, 0.0),  # past the cap: R clamps at 0
    ],
)
def test_lr_multiplier_iteration_warmdown_is_wallclock_aware_under_cap(step, elapsed_s, expected):
    """Cap 600 s: warmdown lasts warmdown_iters mean step times and ends exactly at the cap."""
    got = lr_multiplier(step, elapsed_s, _train(max_wallclock_seconds=600.0))
    assert got == pytest.approx(expected, abs=1e-12)


def test_lr_multiplier_zero_warmdown_iters_is_constant():
    """warmdown_iters 0 (and no frac) keeps the multiplier at 1, with or without a cap."""
    for cap in (0.0, 600.0):
        train = _train(warmdown_iters=0, max_wallclock_seconds=cap)
        assert [lr_multiplier(s, e, train) for s, e in [(0, 0.0), (999, 599.0), (1000, 600.0)]] == [1.0] * 3


@pytest.mark.parametrize(
    "elapsed_s, expected",
    [
        (0.0, 1.0),
        (299.0, 1.0),
        (300.0, 1.0),
        (450.0, 0.5),
        (540.0, 0.2),
        (570.0, 0.1),
        (590.0, 0.1),
        (700.0, 0.1),
    ],
)
def test_lr_multiplier_frac_warmdown_with_min_lr_under_cap(elapsed_s, expected):
    """frac = elapsed / 600: 1 until frac 0.5, then (1 - frac) / 0.5 floored at min_lr 0.1 (#1787)."""
    train = _train(warmdown_frac=0.5, min_lr=0.1, max_wallclock_seconds=600.0)
    assert lr_multiplier(step=7, elapsed_s=elapsed_s, train=train) == pytest.approx(expected, abs=1e-12)


def test_lr_multiplier_frac_warmdown_without_cap_uses_steps():
    """No cap: frac = step / iterations; with min_lr 0 the multiplier reaches 0 at the last step."""
    train = _train(warmdown_frac=0.72, min_lr=0.0)
    got = [lr_multiplier(s, elapsed_s=9999.0, train=train) for s in (0, 279, 280, 640, 1000)]
    assert got == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.0], abs=1e-12)


def test_muon_momentum_warmup_endpoints_and_midpoint():
    """Linear 0.85 -> 0.95 over 500 steps (BASE), then constant; 0 warmup steps is constant."""
    optim = OptimConfig(muon_momentum=0.95, muon_momentum_warmup_start=0.85, muon_momentum_warmup_steps=500)
    got = [muon_momentum_at(s, optim) for s in (0, 250, 500, 5000)]
    assert got == pytest.approx([0.85, 0.90, 0.95, 0.95], abs=1e-12)
    optim = OptimConfig(muon_momentum=0.97, muon_momentum_warmup_start=0.92, muon_momentum_warmup_steps=1500)
    assert muon_momentum_at(375, optim) == pytest.approx(0.9325, abs=1e-12)
    assert muon_momentum_at(0, optim.model_copy(update={"muon_momentum_warmup_steps": 0})) == 0.97
