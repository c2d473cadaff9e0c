"""Selective +-1 pruning (#1019, from #609): zero the cheapest codes until the artifact fits its target."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from pgolf_core.config import QuantConfig, QuantGroupConfig, RunConfig
from pgolf_core.eval import EvalResult
from pgolf_core.quant import (
    ArtifactOverCapWarning,
    build_artifact,
    collect_hessians,
    format_gap_table,
    quant_gap,
)
from pgolf_core.quant.format import encode
from pgolf_core.quant.prune import candidates, prune_to_fit, undo
from pgolf_core.quant.quantize import quantize_state
from pgolf_core.quant.schemes import dequantize
from tests.model.helpers import TINY, tiny_model

INT6 = QuantConfig(
    scheme="groups",
    keep_float_max_numel=1024,
    attn=QuantGroupConfig(bits=6, clip="sdclip", sdclip_k=12.85, gptq=True),
    mlp=QuantGroupConfig(bits=6, clip="sdclip", sdclip_k=12.85, gptq=True),
    embed=QuantGroupConfig(bits=7, clip="sdclip", sdclip_k=15.0, gptq=True),
    compressor="brotli",
)
X = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    model = tiny_model(mlp={"mult": 4.0})
    g = torch.Generator().manual_seed(1)
    hess = collect_hessians(model, [(torch.randint(0, 64, (2, 32), generator=g), None) for _ in range(2)])
    qts, _ = quantize_state(model, INT6, hessians=hess)
    return model, hess, qts


def size_of(qts) -> int:
    return len(encode(qts, "brotli", "plain", "groups")[0])


def test_candidates_are_the_plus_minus_one_codes_ranked_by_their_added_output_error(setup):
    """Cost of zeroing one code = the change of diag(H)-weighted squared error when it is actually zeroed."""
    model, hess, qts = setup
    state = model.state_dict()
    tid, idx, cost = candidates(qts, state, hess)
    assert bool((cost[1:] >= cost[:-1]).all())
    n_ones = sum(int((qt.arrays["q"].abs() == 1).sum()) for qt in qts if qt.kind == "row")
    assert tid.numel() == n_ones > 1000
    for k in (0, tid.numel() // 2, tid.numel() - 1):
        qt = qts[int(tid[k])]
        w = state[qt.name].float()
        h = hess[qt.name].diagonal()
        col = int(idx[k]) % qt.shape[1]
        before = ((w - dequantize(qt).float())[:, col].square() * h[col]).sum()
        q = qt.arrays["q"].clone()
        assert abs(int(q.view(-1)[idx[k]])) == 1
        q.view(-1)[idx[k]] = 0
        zeroed = type(qt)(qt.name, qt.kind, qt.group, qt.dtype, qt.shape, {**qt.arrays, "q": q}, qt.meta)
        after = ((w - dequantize(zeroed).float())[:, col].square() * h[col]).sum()
        assert float(cost[k]) == pytest.approx(float(after - before), rel=1e-3, abs=1e-9)


def test_an_artifact_just_over_its_target_ends_under_it_with_few_changes(setup):
    """300 bytes over: the cheapest codes, and only +-1 ones, are zeroed until it fits, in a handful of
    encodes; ~11 codes per byte here (3,256 for 300 bytes: +-1 and 0 are both common int6 codes, so each
    zero saves under a bit); undo restores the original codes."""
    model, hess, qts = setup
    before = size_of(qts)
    target = before - 300
    pruned, res = prune_to_fit(qts, model.state_dict(), target, size_of, hessians=hess)
    assert res.fits and res.bytes_after == size_of(pruned) <= target and res.bytes_before == before
    assert 300 <= res.values <= 16 * 300 and res.probes <= 12
    tid, idx, cost = candidates(qts, model.state_dict(), hess)
    changed = 0
    for i, (a, b) in enumerate(zip(qts, pruned, strict=True)):
        if a.kind != "row":
            assert a is b
            continue
        diff = (a.arrays["q"] != b.arrays["q"]).reshape(-1)
        changed += int(diff.sum())
        assert (
            bool((a.arrays["q"].reshape(-1)[diff].abs() == 1).all())
            and int(b.arrays["q"].reshape(-1)[diff].abs().sum()) == 0
        )
        # exactly the first res.values candidates, i.e. the cheapest ones
        want = set(idx[: res.values][tid[: res.values] == i].tolist())
        assert set(torch.nonzero(diff).flatten().tolist()) == want
    assert changed == res.values
    assert res.added_error == pytest.approx(float(cost[: res.values].sum()), rel=1e-5)
    for a, b in zip(undo(pruned, res), qts, strict=True):
        assert all(torch.equal(a.arrays[k], b.arrays[k]) for k in b.arrays)


def test_nothing_changes_when_it_fits_or_when_no_pruning_could_fit(setup):
    model, hess, qts = setup
    before = size_of(qts)
    same, res = prune_to_fit(qts, model.state_dict(), before, size_of, hessians=hess)
    assert same is qts and res.values == 0 and res.fits and res.probes == 1
    same, res = prune_to_fit(qts, model.state_dict(), before // 10, size_of, hessians=hess)
    assert same is qts and res.values == 0 and not res.fits and res.candidates > 0


def evaluate(model) -> EvalResult:
    with torch.no_grad():
        loss = float(model.nll(X[:, :-1], X[:, 1:]).mean())
    return EvalResult(
        loss=loss, bpb=loss / math.log(2), tokens=X[:, 1:].numel(), bytes=X[:, 1:].numel(), seconds=0.0
    )


def test_prune_to_cap_fits_the_artifact_and_the_gap_row_reports_it(setup):
    """byte_cap 300 bytes under the artifact: build_artifact prunes it under the cap (no warning), the
    round trip is verified, and the quant-gap row reports the codes and their bpb cost."""
    model, hess, _ = setup
    full = build_artifact(model, INT6, hessians=hess)
    cfg = INT6.model_copy(update={"byte_cap": full.total_bytes - 300, "prune_to_cap": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error", ArtifactOverCapWarning)
        art = build_artifact(model, cfg, hessians=hess)
    assert not art.over_cap and art.details["prune"]["values"] == art.prune.values > 0
    assert art.details["accounting"]["pruned_values"] == art.prune.values
    with pytest.warns(ArtifactOverCapWarning, match="OVER THE CAP by 300 bytes"):
        off = build_artifact(model, cfg.model_copy(update={"prune_to_cap": False}), hessians=hess)
    assert off.over_cap and off.prune is None  # default: reported over the cap, never silently changed
    run = RunConfig.model_validate({"model": {**TINY, "attn_backend": "sdpa", "mlp": {"mult": 4.0}}})
    rows = quant_gap(
        model.state_dict(), run, [("int6", INT6), ("int6 pruned", cfg)], evaluate=evaluate, hessians=hess
    )
    assert rows[0].pruned == 0 and rows[1].pruned == art.prune.values and not rows[1].over_cap
    unpruned_bpb = rows[0].bpb_after  # the same quantization, unpruned
    assert rows[1].prune_bpb == pytest.approx(rows[1].bpb_after - unpruned_bpb, abs=1e-12)
    table = format_gap_table(rows)
    assert table.splitlines()[0].endswith("| cap | pruned |")
    assert f"| {art.prune.values:,} ({rows[1].prune_bpb:+.4f} bpb) |" in table.splitlines()[3]
