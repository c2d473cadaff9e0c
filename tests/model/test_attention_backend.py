"""The attention kernel is chosen once (FA3, FA2, SDPA); an explicit choice that cannot run fails clearly."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from pgolf_core.config import ModelConfig
from pgolf_core.model import attention, build_model, select_attention_backend
from pgolf_core.model.attention import _flash
from tests.model.helpers import tiny_cfg


def test_backend_auto_on_cpu_is_sdpa():
    """On CPU "auto" and "sdpa" both resolve to SDPA, and the built model reports it."""
    cpu = torch.device("cpu")
    assert select_attention_backend("auto", cpu) == "sdpa"
    assert select_attention_backend("sdpa", cpu) == "sdpa"
    assert build_model(tiny_cfg(), device="cpu").attn_backend == "sdpa"


@pytest.mark.parametrize("kind", ["fa3", "fa2"])
def test_backend_explicit_flash_on_cpu_raises_clear_error(kind):
    """Asking for a flash kernel on CPU names the backend and the missing CUDA device."""
    message = rf"model.attn_backend='{kind}' is unavailable: {kind} needs a CUDA device"
    with pytest.raises(RuntimeError, match=message):
        select_attention_backend(kind, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="unavailable"):
        build_model(tiny_cfg(attn_backend=kind), device="cpu")


@pytest.fixture
def fake_hopper(monkeypatch):
    """Pretend a Hopper GPU exists and no flash package is installed (None in sys.modules blocks imports)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(attention, "_FLASH_KERNELS", {})
    for name in ("flash_attn_interface", "flash_attn_3", "flash_attn_3.flash_attn_interface", "flash_attn"):
        monkeypatch.setitem(sys.modules, name, None)
    return monkeypatch


def test_backend_missing_flash_packages_fall_back_or_name_the_module(fake_hopper):
    """Without flash packages "auto" gives SDPA; "fa3"/"fa2" errors name the modules that failed to import."""
    cuda = torch.device("cuda")
    assert select_attention_backend("auto", cuda) == "sdpa"
    with pytest.raises(RuntimeError, match="flash_attn_interface.*flash_attn_3.flash_attn_interface"):
        select_attention_backend("fa3", cuda)
    with pytest.raises(RuntimeError, match="import flash_attn"):
        select_attention_backend("fa2", cuda)


def test_backend_fa3_needs_hopper(fake_hopper):
    """FA3 on a non-Hopper GPU is refused with the capability it found; auto moves on."""
    fake_hopper.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(RuntimeError, match=r"Hopper GPU .* has \(8, 0\)"):
        select_attention_backend("fa3", torch.device("cuda"))


def reference_flash(q, k, v, *, causal, window_size=(-1, -1)):
    """A stand-in flash kernel with FA's (B, T, H, K) layout and keyword-only API, built on SDPA."""
    assert causal
    T = q.size(1)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    left = window_size[0]
    mask = (j <= i) & ((i - j <= left) if left >= 0 else True)
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, enable_gqa=True
    )
    return y.transpose(1, 2), torch.zeros(1)  # FA3 builds that return (out, lse)


@pytest.mark.parametrize("window", [0, 3])
def test_backend_flash_call_uses_keywords_window_and_unwraps_tuple(fake_hopper, window):
    """ "auto" picks an FA3 module, called with keywords and window (W-1, 0); a tuple result is unwrapped."""
    fake_module = types.SimpleNamespace(flash_attn_func=reference_flash)
    fake_hopper.setitem(sys.modules, "flash_attn_interface", fake_module)
    assert select_attention_backend("auto", torch.device("cuda")) == "fa3"
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 8, n, 16, generator=gen) for n in (4, 2, 2))
    got = _flash("fa3", q, k, v, window)
    torch.testing.assert_close(got, attention.causal_attention(q, k, v, "sdpa", window))


def test_backend_flash_model_on_cpu_runs_sdpa_path():
    """A model built for FA3 still runs on CPU / in fp32: the forward takes SDPA for such tensors."""
    model = attention.CausalSelfAttention(ModelConfig(), layer=0, backend="fa3")
    assert model(torch.randn(1, 4, 512)).shape == (1, 4, 512)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_backend_gpu_autocast_forward_matches_sdpa():
    """On CUDA under bf16 autocast the selected backend agrees with SDPA on the record-1855 shape."""
    cfg = tiny_cfg(
        model_dim=512,
        num_heads=8,
        num_kv_heads=4,
        rotary={"dims": 16},
        attention={"xsa_last_n": 4, "gate": {"kind": "sparse"}, "window": {"size": 8}},
        embeddings={"smear": {"kind": "v2"}},
        residual={"parallel": {"kind": "two_lane", "start_layer": 2}},
    )
    torch.manual_seed(0)
    model = build_model(cfg).cuda()
    sdpa = build_model(cfg, device="cpu").cuda()
    sdpa.load_state_dict(model.state_dict())
    ids = torch.randint(0, 64, (2, 64), device="cuda")
    with torch.autocast("cuda", torch.bfloat16), torch.no_grad():
        torch.testing.assert_close(model(ids), sdpa(ids), atol=5e-2, rtol=5e-2)
