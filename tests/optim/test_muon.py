"""Muon at world size 1 against a hand-written reference step (the baseline's Muon + #1285's row norm)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from pgolf_core.config import OptimConfig
from pgolf_core.optim.muon import Muon, compute_dtype, orthogonalize


def reference_muon(params, grads_per_step, *, lr, momentum, nesterov, steps, coefficients, row_norm, wd):
    """The update rule written out long-hand, one matrix at a time."""
    params = [p.clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(params, grads)):
            bufs[i] = momentum * bufs[i] + g
            u = g + momentum * bufs[i] if nesterov else bufs[i]
            if row_norm:
                u = u / torch.clamp(torch.linalg.vector_norm(u, dim=-1, keepdim=True), min=1e-7)
            u = orthogonalize(u, steps, coefficients)
            rows, cols = p.shape[-2], p.shape[-1]
            u = (u * math.sqrt(max(1.0, rows / cols))).to(compute_dtype(p.device)).float()
            params[i] = p * (1 - lr * wd) - lr * u
    return params


def run_muon(params, grads_per_step, **kw):
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = Muon(ps, **kw)
    for grads in grads_per_step:
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt.step()
    return ps, opt


def _problem(num_steps, shapes=((16, 32), (48, 16), (24, 24)), seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(*s, generator=gen) for s in shapes]
    grads = [[torch.randn(*s, generator=gen) * 0.01 for s in shapes] for _ in range(num_steps)]
    return params, grads


CASES = [
    {"nesterov": True, "coefficients": "quintic", "row_norm": False, "wd": 0.0},
    {"nesterov": True, "coefficients": "polar_express", "row_norm": True, "wd": 0.095},
    {"nesterov": False, "coefficients": "quintic", "row_norm": True, "wd": 0.04},
]


@pytest.mark.parametrize("case", CASES, ids=["baseline", "polar_rownorm_wd", "heavyball_rownorm_wd"])
def test_muon_single_step_matches_reference(case):
    """One step = WD then -lr * round(scale * NS(rownorm(g + mu * g))) on fresh momentum, to fp32 roundoff."""
    params, grads = _problem(1)
    kw = {"lr": 0.02, "momentum": 0.95, "steps": 5, "coefficients": case["coefficients"]}
    expected = reference_muon(
        params, grads, nesterov=case["nesterov"], row_norm=case["row_norm"], wd=case["wd"], **kw
    )
    got, opt = run_muon(
        params,
        grads,
        lr=0.02,
        momentum=0.95,
        nesterov=case["nesterov"],
        backend_steps=5,
        coefficients=case["coefficients"],
        row_norm=case["row_norm"],
        weight_decay=case["wd"],
    )
    # Only fp32 roundoff differs (p.add_(u, alpha=-lr) vs p - lr * u): measured <= 3e-8.
    for p, e in zip(got, expected):
        torch.testing.assert_close(p.detach(), e, atol=1e-6, rtol=0)
    # The momentum buffer after one step is the gradient itself.
    for p, g in zip(got, grads[0]):
        assert torch.equal(opt.state[p]["momentum_buffer"], g)


@pytest.mark.parametrize("case", CASES, ids=["baseline", "polar_rownorm_wd", "heavyball_rownorm_wd"])
def test_muon_momentum_over_steps_matches_reference(case):
    """Four steps with changing gradients follow buf <- mu buf + g and the reference parameters."""
    params, grads = _problem(4)
    expected = reference_muon(
        params,
        grads,
        lr=0.03,
        momentum=0.9,
        nesterov=case["nesterov"],
        steps=5,
        coefficients=case["coefficients"],
        row_norm=case["row_norm"],
        wd=case["wd"],
    )
    got, opt = run_muon(
        params,
        grads,
        lr=0.03,
        momentum=0.9,
        nesterov=case["nesterov"],
        coefficients=case["coefficients"],
        row_norm=case["row_norm"],
        weight_decay=case["wd"],
    )
    for p, e in zip(got, expected):
        torch.testing.assert_close(p.detach(), e, atol=1e-6, rtol=0)
    for i, p in enumerate(got):
        buf = sum(0.9 ** (3 - t) * grads[t][i] for t in range(4))
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, atol=1e-7, rtol=1e-6)


def test_muon_update_has_spectral_size_lr_times_scale():
    """Without WD, p_old - p_new has singular values lr * sqrt(max(1, rows/cols)) * f(S), f in band."""
    params, grads = _problem(1, shapes=((64, 16), (16, 64)))
    got, _ = run_muon(params, grads, lr=0.1, momentum=0.95)
    for p0, p1, scale in zip(params, got, (2.0, 1.0)):  # tall 64x16: sqrt(4); wide 16x64: unscaled
        sv = torch.linalg.svdvals((p0 - p1.detach()).double()) / (0.1 * scale)
        assert 0.66 <= sv.min().item() and sv.max().item() <= 1.22


def test_muon_bank_slices_match_separate_matrices():
    """A 3-D bank (L, rows, cols) is updated like L separate matrices (per-slice NS, row norm, scale)."""
    params, grads = _problem(2, shapes=((3, 24, 16),))
    bank, _ = run_muon(params, grads, lr=0.05, momentum=0.9, row_norm=True, weight_decay=0.1)
    split_params = list(params[0].unbind(0))
    split_grads = [list(g[0].unbind(0)) for g in grads]
    sep, _ = run_muon(split_params, split_grads, lr=0.05, momentum=0.9, row_norm=True, weight_decay=0.1)
    torch.testing.assert_close(bank[0].detach(), torch.stack([p.detach() for p in sep]), atol=0, rtol=0)


def test_muon_skips_parameters_without_grad():
    """A parameter with grad None keeps its value (no weight decay) and gets no momentum state."""
    a, b = torch.nn.Parameter(torch.randn(8, 8)), torch.nn.Parameter(torch.randn(8, 8))
    b0 = b.detach().clone()
    opt = Muon([a, b], lr=0.1, weight_decay=0.5)
    a.grad = torch.randn(8, 8)
    opt.step()
    assert torch.equal(b.detach(), b0) and b not in opt.state
    assert "momentum_buffer" in opt.state[a]


def test_muon_rejects_vectors_and_bad_coefficients():
    """Muon only takes matrices / banks, and validates the coefficient name at construction."""
    with pytest.raises(ValueError, match=r"\(8,\)"):
        Muon([torch.nn.Parameter(torch.zeros(8))], lr=0.1)
    with pytest.raises(ValueError, match="'cubic'"):
        Muon([torch.nn.Parameter(torch.zeros(8, 8))], lr=0.1, coefficients="cubic")


def test_muon_defaults_are_the_config_defaults():
    """Muon's and orthogonalize's keyword defaults are OptimConfig's muon_* defaults."""
    optim = OptimConfig()
    muon = inspect.signature(Muon).parameters
    assert muon["momentum"].default == optim.muon_momentum
    assert muon["backend_steps"].default == optim.muon_backend_steps
    assert muon["coefficients"].default == optim.muon_coefficients
    assert muon["row_norm"].default == optim.muon_row_norm
    assert muon["weight_decay"].default == optim.muon_weight_decay
    ortho = inspect.signature(orthogonalize).parameters
    assert ortho["steps"].default == optim.muon_backend_steps
    assert ortho["coefficients"].default == optim.muon_coefficients
