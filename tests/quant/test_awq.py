"""AWQ-lite (#1908): activation-RMS saliency, int8 column blocks inside the same GPTQ pass."""

from __future__ import annotations

import pytest
import torch

from pgolf_core.config import QuantConfig, QuantGroupConfig
from pgolf_core.quant import ArtifactError, build_artifact, collect_hessians, dequantized_state, load_artifact
from pgolf_core.quant.awq import act_rms, block_scores, select_groups
from pgolf_core.quant.gptq import gptq_quantize, output_error
from pgolf_core.quant.quantize import quantize_state
from pgolf_core.quant.schemes import (
    FineCols,
    QTensor,
    clip_percentile,
    dequant_rows,
    dequantize,
    row_scales,
)
from tests.model.helpers import tiny_model
from tests.quant.reference import gptq_reference
from tests.quant.test_artifact import assert_bit_identical, resign
from tests.quant.test_gptq import correlated_problem

GPTQ6 = QuantConfig(
    scheme="groups",
    keep_float_max_numel=1024,
    attn=QuantGroupConfig(bits=6, clip="sdclip", gptq=True),
    mlp=QuantGroupConfig(bits=6, clip="search", gptq=True),
    embed=QuantGroupConfig(bits=7, clip="sdclip", sdclip_k=15.0, gptq=True),
)


@pytest.fixture(scope="module")
def calibrated():
    """A tiny model, its Hessians, and the calibration inputs of every linear (for ||(W - W^) X||)."""
    torch.set_num_threads(1)
    model = tiny_model(mlp={"mult": 4.0})
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 64, (2, 32), generator=g), None) for _ in range(3)]
    return model, collect_hessians(model, batches), batches


def test_fine_columns_on_the_main_grid_reproduce_plain_gptq_bit_exactly():
    """The fine-column machinery with the regular scale and range changes no code (nor does an empty set)."""
    w, h = correlated_problem(rows=40, cols=96, seed=5)
    s = row_scales(clip_percentile(w, 100.0), 31)
    plain = gptq_quantize(w, h, s, 31, block_size=32)
    same = gptq_quantize(w, h, s, 31, block_size=32, fine=FineCols(torch.arange(10, 30), s, 31))
    empty = gptq_quantize(w, h, s, 31, block_size=32, fine=FineCols(torch.empty(0, dtype=torch.long), s, 31))
    assert torch.equal(plain, same) and torch.equal(plain, empty)


def test_fine_gptq_matches_the_slow_reference_and_lowers_the_output_error():
    """Protected columns on the int8 grid: codes agree with the explicit-inverse reference. Protecting the
    last 16 columns of the pass (the ones no later column can compensate) cuts the layer-output error
    tr(E H E^T) of int4 GPTQ ~27x (columns early in the pass barely matter: later ones absorb their error)."""
    w, h = correlated_problem(rows=48, cols=64, seed=6)
    clip = clip_percentile(w, 100.0)
    s, s_hi = row_scales(clip, 7), row_scales(clip, 127)
    cols = torch.arange(48, 64)
    fine = FineCols(cols, s_hi, 127)
    fast = gptq_quantize(w, h, s, 7, block_size=16, act_order=False, fine=fine)
    slow = gptq_reference(w, h, s, 7, damp=0.01, fine=(set(cols.tolist()), s_hi, 127))
    assert float((fast == slow).float().mean()) >= 0.999
    assert int(fast[:, cols].abs().max()) > 7 and int(fast[:, :48].abs().max()) <= 7
    plain = gptq_quantize(w, h, s, 7, block_size=16, act_order=False)
    e_fine = output_error(w, dequant_rows(fast, s, fine), h)
    e_plain = output_error(w, dequant_rows(plain, s), h)
    assert e_fine / e_plain == pytest.approx(0.0375, abs=0.01)


def test_top_k_zero_is_plain_gptq_and_top_k_one_protects_the_most_salient_block(calibrated):
    """awq_top_k=0: the same stored tensors as a config without AWQ; top-k 1: one 16-column block, the
    arg-max of act_rms_j * mean|W_:,j| summed over blocks of all candidates (bits < 8; a brute force)."""
    model, hess, _ = calibrated
    plain, details = quantize_state(model, GPTQ6, hessians=hess)
    off, _ = quantize_state(model, GPTQ6.model_copy(update={"awq_top_k": 0}), hessians=hess)
    assert details["awq"] == {}
    for a, b in zip(plain, off, strict=True):
        assert a.arrays.keys() == b.arrays.keys() and all(
            torch.equal(a.arrays[k], b.arrays[k]) for k in a.arrays
        )
    state = model.state_dict()
    best = None
    for name in (qt.name for qt in plain if qt.kind == "row"):
        w, rms = state[name].float(), hess[name].diagonal().sqrt()
        for start in range(0, w.shape[1], 16):
            score = sum(
                float(rms[j] * w[:, j].abs().mean()) for j in range(start, min(start + 16, w.shape[1]))
            )
            if best is None or score > best[0]:
                best = (score, name, start)
    awq = GPTQ6.model_copy(update={"awq_top_k": 1, "awq_group_size": 16})
    qts, details = quantize_state(model, awq, hessians=hess)
    assert details["awq"] == {best[1]: [[best[2], 16]]}
    qt = next(q for q in qts if q.name == best[1])
    assert qt.arrays["awq_q"].shape == (qt.shape[0], 16) and qt.meta["awq_bits"] == 8
    assert int(qt.arrays["q"][:, best[2] : best[2] + 16].abs().sum()) == 0  # codes live in awq_q only
    assert int(qt.arrays["awq_q"].abs().max()) > 31  # int8 range used, beyond int6's


def test_protected_group_does_not_increase_the_error_on_calibration_data(calibrated):
    """||(W - W^) X|| over the calibration inputs of the protected layer: lower with its block at int8."""
    model, hess, batches = calibrated
    awq = GPTQ6.model_copy(update={"awq_top_k": 3, "awq_group_size": 16})
    qts, details = quantize_state(model, awq, hessians=hess)
    plain = {qt.name: qt for qt in quantize_state(model, GPTQ6, hessians=hess)[0]}
    modules = dict(model.named_modules())
    state = model.state_dict()
    for name in details["awq"]:
        if name == "tok_emb.weight":
            xs = [model.hidden(x).reshape(-1, state[name].shape[1]) for x, _ in batches]
        else:
            seen = []
            hook = modules[name.removesuffix(".weight")].register_forward_pre_hook(
                lambda m, a, _seen=seen: _seen.append(a[0].reshape(-1, a[0].shape[-1]))
            )
            with torch.no_grad():
                for x, _ in batches:
                    model(x)
            hook.remove()
            xs = seen
        x = torch.cat(xs).detach()
        w = state[name].float()
        new = next(qt for qt in qts if qt.name == name)
        err_awq = float(((w - dequantize(new).float()) @ x.T).norm())
        err_plain = float(((w - dequantize(plain[name]).float()) @ x.T).norm())
        assert err_awq <= err_plain, name


def test_dequantize_applies_the_fine_scale_only_to_the_stored_columns():
    """Columns of the groups come from awq_q * awq_scale (whatever q holds there); all others from
    q * scale."""
    g = torch.Generator().manual_seed(7)
    q = torch.randint(-31, 32, (6, 40), generator=g, dtype=torch.int8)
    scale = torch.rand(6, generator=g).half() + 0.5
    awq_q = torch.randint(-127, 128, (6, 12), generator=g, dtype=torch.int8)
    awq_scale = (torch.rand(6, generator=g) * 0.01).half()
    qt = QTensor(
        "w",
        "row",
        "mlp",
        "float32",
        (6, 40),
        {"q": q, "scale": scale, "awq_q": awq_q, "awq_scale": awq_scale},
        {"awq": [[4, 8], [36, 4]]},
    )
    w = dequantize(qt)
    fine = [*range(4, 12), *range(36, 40)]
    rest = [j for j in range(40) if j not in fine]
    assert torch.equal(w[:, rest], q[:, rest].float() * scale.float()[:, None])
    assert torch.equal(w[:, fine], awq_q.float() * awq_scale.float()[:, None])


def test_awq_round_trips_through_the_artifact_and_bad_groups_are_refused(calibrated):
    """awq_top_k=2 with LQER on top: bit-identical after load; a header with overlapping groups is refused."""
    model, hess, _ = calibrated
    cfg = GPTQ6.model_copy(update={"awq_top_k": 2, "awq_group_size": 16, "lqer_top_k": 2, "lqer_rank": 2})
    art = build_artifact(model, cfg, hessians=hess)
    assert_bit_identical(load_artifact(art.blob), dequantized_state(model, cfg, hess))
    assert sum(len(v) for v in art.details["awq"].values()) == 2
    plain = build_artifact(model, GPTQ6, hessians=hess)
    assert art.model_bytes > plain.model_bytes  # int8 codes and a second scale per row cost bytes

    def overlap(h):
        t = next(t for t in h["tensors"] if "awq" in t["m"])
        t["m"]["awq"] = [[0, 16], [8, 16]] if len(t["m"]["awq"]) == 2 else [[0, 8], [4, 8]]

    with pytest.raises(ArtifactError, match="awq groups .* overlap"):
        load_artifact(resign(art.blob, overlap))


def test_awq_needs_hessians_and_skips_tensors_at_or_above_awq_bits(calibrated):
    """No Hessians: a clear error. Candidates are the per-row tensors below awq_bits (8-bit ones are not)."""
    model, hess, _ = calibrated
    with pytest.raises(ValueError, match="awq_top_k=1 needs activation statistics"):
        quantize_state(model, GPTQ6.model_copy(update={"awq_top_k": 1}))
    cfg = GPTQ6.model_copy(
        update={"awq_top_k": 50, "awq_group_size": 16, "embed": QuantGroupConfig(bits=8, gptq=True)}
    )
    _, details = quantize_state(model, cfg, hessians=hess)
    assert "tok_emb.weight" not in details["awq"] and sum(len(v) for v in details["awq"].values()) == 50


def test_act_rms_is_the_root_mean_square_of_the_inputs_and_ties_go_to_the_earlier_block():
    """act_rms = sqrt(diag(X^T X / n)); block scores sum saliency; equal scores keep tensor then
    block order."""
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(8)) * torch.arange(1, 9)
    torch.testing.assert_close(act_rms(x.T @ x / 500), x.square().mean(0).sqrt())
    w = torch.ones(3, 8)
    scores = block_scores(w, torch.ones(8), 3)
    assert [(s, a, n) for s, a, n in scores] == [(3.0, 0, 3), (3.0, 3, 3), (2.0, 6, 2)]
    picked = select_groups({"a": w, "b": w}, {"a": torch.eye(8), "b": torch.eye(8)}, 3, 4)
    assert picked == {"a": [[0, 4], [4, 4]], "b": [[0, 4]]}
