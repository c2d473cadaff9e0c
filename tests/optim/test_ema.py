"""EMA of the weights : fixed point, closed form, copy-back and resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pgolf_core.optim import EMA


class Net(nn.Module):
    """An fp32 and a bf16 parameter, an fp32 buffer and an integer buffer (not averaged)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3))
        self.h = nn.Parameter(torch.randn(5).bfloat16())
        self.register_buffer("running", torch.randn(3))
        self.register_buffer("count", torch.tensor(7))


def test_ema_constant_weights_are_a_fixed_point_exactly():
    """After k updates with unchanged weights the shadow equals the weights bit for bit."""
    torch.manual_seed(0)
    net = Net()
    ema = EMA(net, decay=0.9965)
    for _ in range(25):
        ema.update(net)
    assert set(ema.shadow) == {"w", "h", "running"}
    assert all(t.dtype == torch.float32 for t in ema.shadow.values())
    assert torch.equal(ema.shadow["w"], net.w.detach())
    assert torch.equal(ema.shadow["h"], net.h.detach().float())
    assert torch.equal(ema.shadow["running"], net.running)


def test_ema_changing_weights_equal_closed_form_geometric_average():
    """shadow_k = d^k w_0 + (1 - d) * sum_j d^(k-j) w_j, to fp32 roundoff."""
    torch.manual_seed(0)
    net, d, k = Net(), 0.9, 6
    ema = EMA(net, decay=d)
    history = [net.w.detach().double().clone()]
    for _ in range(k):
        with torch.no_grad():
            net.w.add_(torch.randn(4, 3))
        history.append(net.w.detach().double().clone())
        ema.update(net)
    expected = d**k * history[0] + (1 - d) * sum(d ** (k - j) * history[j] for j in range(1, k + 1))
    torch.testing.assert_close(ema.shadow["w"].double(), expected, atol=1e-6, rtol=1e-6)
    assert (ema.shadow["w"].double() - history[-1]).abs().max().item() > 0.1  # genuinely averaged


def test_ema_copy_to_casts_to_model_dtypes_and_skips_integers():
    """copy_to writes the shadow into every floating tensor in its own dtype; integer buffers untouched."""
    torch.manual_seed(0)
    net = Net()
    ema = EMA(net, decay=0.5)
    ema.shadow["h"].copy_(torch.tensor([1.0, 1.0 / 3, 2.0, -0.1, 100.5]))
    ema.shadow["w"].fill_(0.25)
    ema.copy_to(net)
    assert net.h.dtype == torch.bfloat16 and torch.equal(net.h.detach(), ema.shadow["h"].bfloat16())
    assert torch.equal(net.w.detach(), torch.full((4, 3), 0.25))
    assert net.count.item() == 7


def test_ema_state_dict_round_trip_continues_identically():
    """Loading a saved EMA state into a fresh EMA restores decay and shadow; later updates agree bitwise."""
    torch.manual_seed(0)
    net = Net()
    ema = EMA(net, decay=0.997)
    with torch.no_grad():
        net.w.mul_(2)
    ema.update(net)
    saved = ema.state_dict()
    ema.update(net)

    resumed = EMA(Net(), decay=0.5)
    resumed.load_state_dict(saved)
    assert resumed.decay == 0.997
    resumed.update(net)
    for name in ema.shadow:
        assert torch.equal(ema.shadow[name], resumed.shadow[name]), name
    with pytest.raises(KeyError, match="missing"):
        resumed.load_state_dict({"decay": 0.9, "shadow": {"w": saved["shadow"]["w"]}})
