"""Newton-Schulz orthogonalization against an SVD reference, for both coefficient sets."""

from __future__ import annotations

import pytest
import torch

from pgolf_core.optim.muon import POLAR_EXPRESS, QUINTIC, ns_coefficients, orthogonalize

SHAPES = [(64, 64), (32, 96), (96, 32), (3, 48, 64), (128, 128)]

# Singular-value bands of the output, measured on SHAPES with condition number 100 (seeds 0..4) and
# pinned with ~0.015 slack. Measured: quintic [0.677, 1.203], polar express [0.854, 1.142]. The upper
# ends are properties of the last polynomial (quintic oscillates around 1; polar express's last step
# peaks at p(0.78) = 1.141), so neither set reaches 1 exactly; polar express is the tighter one.
BANDS = {"quintic": (0.66, 1.22), "polar_express": (0.84, 1.16)}


def _with_spectrum(shape, cond: float, seed: int):
    """G = U diag(S) V^T in float64 with S log-spaced over [3/cond, 3] and random orthonormal U, V."""
    gen = torch.Generator().manual_seed(seed)
    *batch, m, n = shape
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(*batch, m, k, generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(*batch, n, k, generator=gen, dtype=torch.float64))[0]
    S = 3.0 * torch.logspace(0, -torch.log10(torch.tensor(float(cond))).item(), k, dtype=torch.float64)
    S = S.expand(*batch, k)
    return (U * S.unsqueeze(-2)) @ V.mT, U, V


def _in_svd_basis(shape, coefficients, seed, dtype=None):
    """(U^T O V, polar factor error) for O = orthogonalize(G), computed in ``dtype`` (default: CPU fp32)."""
    G, U, V = _with_spectrum(shape, cond=100, seed=seed)
    out = orthogonalize(G.float(), coefficients=coefficients, dtype=dtype).double()
    polar = U @ V.mT
    return U.mT @ out @ V, ((out - polar).norm() / polar.norm()).item()


# Relative off-diagonal mass of U^T O V: measured <= 0.031 in bf16 (the GPU compute dtype; 2^-8 unit
# roundoff per op) and <= 1.6e-6 in fp32 (the CPU compute dtype). Bands and distances to U V^T agree
# between the two dtypes within 0.01 (fp32: quintic [0.682, 1.202], polar express [0.859, 1.141]).
OFFDIAG_LIMIT = {torch.bfloat16: 0.04, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("coefficients", ["quintic", "polar_express"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_orthogonalize_keeps_singular_vectors_and_maps_singular_values_into_band(shape, coefficients, dtype):
    """orthogonalize(U S V^T) = U f(S) V^T: U^T O V is diagonal to the dtype's precision, f(S) in the band."""
    lo, hi = BANDS[coefficients]
    for seed in range(2):
        M, _ = _in_svd_basis(shape, coefficients, seed, dtype)
        diag = torch.diagonal(M, dim1=-2, dim2=-1)
        off = M - torch.diag_embed(diag)
        assert (off.norm() / diag.norm()).item() < OFFDIAG_LIMIT[dtype]
        assert lo <= diag.min().item() and diag.max().item() <= hi


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_orthogonalize_polar_express_is_closer_to_polar_factor_than_quintic(shape):
    """Relative distance to U V^T, same inputs: polar express 0.093-0.108, quintic 0.192-0.199 (measured)."""
    for seed in range(2):
        _, err_quintic = _in_svd_basis(shape, "quintic", seed)
        _, err_polar = _in_svd_basis(shape, "polar_express", seed)
        assert 0.15 < err_quintic < 0.23
        assert 0.07 < err_polar < 0.13
        assert err_polar < 0.65 * err_quintic


def test_orthogonalize_polar_express_band_is_tighter_than_quintic():
    """Over all shapes the polar-express band sits inside [0.84, 1.16] and is narrower than quintic's."""
    spans = {}
    for coefficients in ("quintic", "polar_express"):
        diags = [
            torch.diagonal(_in_svd_basis(s, coefficients, 0)[0], dim1=-2, dim2=-1).flatten() for s in SHAPES
        ]
        d = torch.cat(diags)
        spans[coefficients] = (d.min().item(), d.max().item())
    (q_lo, q_hi), (p_lo, p_hi) = spans["quintic"], spans["polar_express"]
    assert p_lo > q_lo + 0.15
    assert p_hi - p_lo < 0.7 * (q_hi - q_lo)


@pytest.mark.parametrize("coefficients, triple", [("quintic", QUINTIC), ("polar_express", POLAR_EXPRESS[0])])
def test_orthogonalize_one_step_applies_the_odd_quintic_to_singular_values(coefficients, triple):
    """With steps=1 a diagonal input diag(s) maps to diag(a x + b x^3 + c x^5), x = s / ||s||."""
    s = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.25, 0.1])
    x = s / s.norm()
    a, b, c = triple
    out = orthogonalize(torch.diag(s), steps=1, coefficients=coefficients)
    expected = a * x + b * x**3 + c * x**5
    torch.testing.assert_close(torch.diagonal(out), expected, atol=0.05, rtol=0.02)
    assert out.fill_diagonal_(0).abs().max().item() == 0.0


def test_orthogonalize_returns_input_dtype_and_keeps_zero():
    """Output dtype follows the input; a zero update stays exactly zero (eps in the norm)."""
    G = torch.randn(8, 16, dtype=torch.float64)
    assert orthogonalize(G).dtype == torch.float64
    assert orthogonalize(G.half()).dtype == torch.float16
    zero = orthogonalize(torch.zeros(8, 16))
    assert zero.dtype == torch.float32 and zero.abs().max().item() == 0.0


def test_ns_coefficients_polar_express_reuses_last_triple_past_five():
    """Steps beyond the five published triples repeat the last one; quintic repeats its single triple."""
    assert ns_coefficients("polar_express", 7) == list(POLAR_EXPRESS) + [POLAR_EXPRESS[-1]] * 2
    assert ns_coefficients("polar_express", 3) == list(POLAR_EXPRESS[:3])
    assert ns_coefficients("quintic", 4) == [QUINTIC] * 4


def test_orthogonalize_rejects_bad_arguments():
    """Unknown coefficient names, zero steps and 1-D / 4-D inputs raise with the offending value."""
    with pytest.raises(ValueError, match="'cubic'"):
        orthogonalize(torch.randn(4, 4), coefficients="cubic")
    with pytest.raises(ValueError, match="steps=0"):
        orthogonalize(torch.randn(4, 4), steps=0)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        orthogonalize(torch.randn(4))
    with pytest.raises(ValueError, match=r"\(2, 2, 4, 4\)"):
        orthogonalize(torch.randn(2, 2, 4, 4))
