"""quant_gap: one row per scheme through the real artifact, bpb before/after from the caller's evaluator."""

from __future__ import annotations

import math

import pytest
import torch

from pgolf_core.config import QuantConfig, QuantGroupConfig, RunConfig
from pgolf_core.eval import EvalResult
from pgolf_core.quant import build_artifact, format_gap_table, load_artifact, quant_gap
from tests.model.helpers import TINY, tiny_model

X = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0))


def evaluate(model) -> EvalResult:
    """A stand-in for evaluate_standard: mean NLL of fixed tokens, one byte per token."""
    with torch.no_grad():
        loss = float(model.nll(X[:, :-1], X[:, 1:]).mean())
    return EvalResult(
        loss=loss, bpb=loss / math.log(2), tokens=X[:, 1:].numel(), bytes=X[:, 1:].numel(), seconds=0.0
    )


def test_quant_gap_rows_match_a_manual_round_trip(tmp_path):
    """Rows for baseline / int4 / GPTQ int4 from a checkpoint file: bytes and bpb equal a hand-made round
    trip.
    """
    cfg = RunConfig.model_validate({"model": {**TINY, "attn_backend": "sdpa"}})
    model = tiny_model()
    torch.save(model.state_dict(), tmp_path / "final_raw.pt")
    int4 = QuantConfig(
        scheme="groups",
        keep_float_max_numel=1024,
        attn=QuantGroupConfig(bits=4),
        mlp=QuantGroupConfig(bits=4),
        embed=QuantGroupConfig(bits=6),
    )
    gptq4 = int4.model_copy(
        update={
            "attn": QuantGroupConfig(bits=4, gptq=True),
            "mlp": QuantGroupConfig(bits=4, gptq=True),
            "lqer_top_k": 1,
        }
    )
    calib = [
        (torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(s)), None) for s in (1, 2)
    ]
    schemes = [("baseline", QuantConfig()), ("int4", int4), ("gptq4", gptq4)]
    rows = quant_gap(tmp_path / "final_raw.pt", cfg, schemes, evaluate=evaluate, calib_batches=calib)
    assert [r.scheme for r in rows] == ["baseline", "int4", "gptq4"]
    before = evaluate(model).bpb
    assert all(r.bpb_before == before and r.gap == r.bpb_after - r.bpb_before for r in rows)
    manual = tiny_model()
    manual.load_state_dict(load_artifact(build_artifact(model, int4).blob))
    assert rows[1].bpb_after == evaluate(manual).bpb
    assert rows[1].model_bytes == build_artifact(model, int4).model_bytes
    assert (
        rows[0].bits == "int8"
        and rows[1].bits == "attn4 mlp4 embed6 gate-"
        and rows[2].bits.startswith("attn4g")
    )
    assert rows[2].calib_seconds > 0 and rows[1].calib_seconds == 0 and rows[0].compressor == "zlib"
    assert abs(rows[0].gap) < 0.1 * abs(rows[1].gap)  # int8 barely moves the (random) model, int4 does
    table = format_gap_table(rows, baseline="baseline")
    assert (
        table.splitlines()[0].startswith("| scheme | bits | clip | compressor |") and "vs base gap" in table
    )
    assert len(table.splitlines()) == 5


def test_quant_gap_gptq_without_calibration_is_an_error():
    """A GPTQ scheme with no Hessians and no calibration batches says what to pass."""
    cfg = RunConfig.model_validate({"model": {**TINY, "attn_backend": "sdpa"}})
    gptq = QuantConfig(scheme="groups", attn=QuantGroupConfig(bits=6, gptq=True))
    with pytest.raises(ValueError, match="calib_batches="):
        quant_gap(tiny_model().state_dict(), cfg, [("g", gptq)], evaluate=evaluate)
