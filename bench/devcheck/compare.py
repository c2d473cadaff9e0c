"""Tolerance comparisons: every check states its tolerance, and NaN or infinity never passes.

Two kinds of tolerance. ``within``: a fixed limit. ``calibrated``: a limit made of a bf16 run's own error
against fp32 on the same inputs (``factor * baseline + floor``): "the compiled bf16 model is no further
from fp32 than twice what bf16 itself costs", which holds whatever the model's scale, where a fixed
bf16 tolerance would have to be guessed for every model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from bench.devcheck.runner import Check

TINY = 1e-30


def _finite(x: float | None) -> bool:
    return x is not None and not math.isnan(x) and not math.isinf(x)


def max_abs_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.detach().double() - ref.detach().double()).abs().max())


def rel_max_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref|: the error in units of the reference's largest entry."""
    ref_d = ref.detach().double()
    return max_abs_err(got, ref) / max(float(ref_d.abs().max()), TINY)


def rel_l2_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| (Frobenius)."""
    ref_d = ref.detach().double()
    return float((got.detach().double() - ref_d).norm()) / max(float(ref_d.norm()), TINY)


def within(name: str, value: float | None, limit: float, detail: str = "") -> Check:
    """Pass when ``value <= limit`` and ``value`` is finite."""
    return Check(name, value, limit, _finite(value) and value <= limit, detail)


def at_least(name: str, value: float | None, limit: float, detail: str = "") -> Check:
    """Pass when ``value >= limit`` and ``value`` is finite (``limit`` is a lower bound)."""
    return Check(name, value, limit, _finite(value) and value >= limit, detail)


def calibrated(
    name: str, value: float | None, baseline: float | None, factor: float, floor: float, detail: str = ""
) -> Check:
    """Pass when ``value <= factor * baseline + floor`` (both finite)."""
    if not _finite(baseline):
        return Check(name, value, None, False, f"no finite baseline ({baseline}); {detail}".rstrip("; "))
    limit = factor * baseline + floor
    text = f"limit {factor:g} x {baseline:.3g} + {floor:g}"
    return Check(
        name, value, limit, _finite(value) and value <= limit, f"{text}; {detail}" if detail else text
    )


def worst_tensor(errors: Mapping[str, float]) -> tuple[str, float]:
    """(name, error) of the largest error; NaN counts as the largest."""
    name = max(errors, key=lambda k: math.inf if math.isnan(errors[k]) else errors[k])
    return name, errors[name]


def grad_errors(got: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per-tensor relative L2 error of two gradient dicts with the same keys (a missing gradient: NaN)."""
    out = {}
    for k, r in ref.items():
        g = got.get(k)
        out[k] = math.nan if g is None or r is None else rel_l2_err(g, r)
    return out
