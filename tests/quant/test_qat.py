"""QAT: the fake quantization is the export's, the straight-through gradient flows, and it toggles
compiled."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from pgolf_core.config import QuantConfig, QuantGroupConfig
from pgolf_core.quant import qat_due, set_qat
from pgolf_core.quant.qat import QATLinear, fake_quant
from pgolf_core.quant.quantize import quantize_state
from pgolf_core.quant.schemes import dequantize
from tests.model.helpers import tiny_model

GROUPS = QuantConfig(
    scheme="groups",
    keep_float_max_numel=1024,
    quant_gates=True,
    attn=QuantGroupConfig(bits=6, clip="search"),
    mlp=QuantGroupConfig(bits=5, clip="sdclip", sdclip_k=6.5),
    gate=QuantGroupConfig(bits=8, percentile=100.0),
)

# Compiling the 5-candidate clip search takes ~10x longer on 2 cores; the switch is the same code.
SIMPLE = QuantConfig(
    scheme="groups", keep_float_max_numel=1024, attn=QuantGroupConfig(bits=6), mlp=QuantGroupConfig(bits=6)
)


@pytest.mark.parametrize("qcfg", [QuantConfig(keep_float_max_numel=1024), GROUPS], ids=["baseline", "groups"])
def test_qat_fake_quant_equals_the_export_dequantization(qcfg):
    """For every fake-quantized linear, fq(w) is bitwise the weight the artifact will hold
    (round-to-nearest)."""
    model = tiny_model(attention={"gate": {"kind": "dense"}})
    export = {qt.name: dequantize(qt) for qt in quantize_state(model, qcfg)[0]}
    n = set_qat(model, True, qcfg)
    names = {id(p): k for k, p in model.named_parameters()}
    covered = [m for m in model.modules() if isinstance(m, QATLinear)]
    assert n == len(covered) == (24 if qcfg.scheme == "baseline_int8" else 28)  # + 4 gates when quantized
    for m in covered:
        assert torch.equal(fake_quant(m.weight, m.qat_spec), export[names[id(m.weight)]])


def test_qat_off_is_bitwise_plain_and_on_is_the_quantized_forward_with_ste_gradient():
    """Off: logits bitwise equal to the plain model. On: logits of the fake-quantized weights, gradients
    unchanged by the rounding."""
    model = tiny_model()
    plain = copy.deepcopy(model)
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    set_qat(model, False, GROUPS)
    assert torch.equal(model(x), plain(x))
    assert set(model.state_dict()) == set(plain.state_dict())  # the switch is not in the state dict
    set_qat(model, True, GROUPS)
    with torch.no_grad():
        for m_q, m_p in zip(model.modules(), plain.modules()):
            if isinstance(m_q, QATLinear):
                m_p.weight.copy_(fake_quant(m_q.weight, m_q.qat_spec))
    torch.testing.assert_close(model(x), plain(x), rtol=1e-5, atol=1e-5)
    model(x, x).backward()
    plain(x, x).backward()
    w_q, w_p = model.blocks[0].mlp.up.weight, plain.blocks[0].mlp.up.weight
    assert w_q.grad is not None and float(w_q.grad.abs().sum()) > 0
    torch.testing.assert_close(
        w_q.grad, w_p.grad, rtol=1e-4, atol=1e-6
    )  # STE: d loss / d w at the quantized point


def test_qat_switches_on_under_torch_compile_without_recompiling():
    """Compiled once with QAT off, flipping the switch changes the compiled output (the #549 flag never
    did)."""
    torch._dynamo.reset()
    model = tiny_model(num_layers=2)
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    set_qat(model, False, SIMPLE)  # install before compiling
    eager_off = model(x).detach()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    out_off = compiled(x).detach()
    set_qat(compiled, True, SIMPLE)  # a compiled module is unwrapped to the model
    out_on = compiled(x)
    eager_on = model(x).detach()
    out_on.sum().backward()  # the STE backward runs through the compiled graph
    set_qat(model, False, SIMPLE)
    out_off_again = compiled(x).detach()
    assert torch.equal(out_off, eager_off) and torch.equal(out_off_again, eager_off)
    torch.testing.assert_close(out_on.detach(), eager_on, rtol=1e-5, atol=1e-5)
    assert float((out_on.detach() - out_off).abs().max()) > 1e-3
    assert counter.frame_count == 1  # one graph serves both states: the switch is read at run time
    assert model.blocks[0].attn.q.weight.grad is not None
    torch._dynamo.reset()


def test_qat_due_follows_the_lr_multiplier():
    """Late QAT turns on once the LR multiplier drops below qat_start_lr_mult, and only when quant.qat is
    on."""
    on = QuantConfig(qat=True, qat_start_lr_mult=0.15)
    assert not qat_due(on, 0.5) and qat_due(on, 0.1) and not qat_due(QuantConfig(), 0.0)


def test_qat_fake_quant_under_inductor_is_bitwise_the_eager_export():
    """Inductor (the real training compiler) gives the same fake-quantized weight as eager, bit for bit.

    Without fp16_round, Inductor fused away the scale's to(fp16).to(fp32) round trip and ~96% of the
    fake-quantized values differed from the export's.
    """
    torch._dynamo.reset()
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(2)) * 0.05
    spec = ("rows", 6, "percentile", 99.9, 12.85, ())
    compiled = torch.compile(fake_quant, fullgraph=True)
    assert torch.equal(compiled(w, spec), fake_quant(w, spec))
    torch._dynamo.reset()
