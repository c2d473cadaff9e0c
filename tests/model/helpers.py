"""Tiny configs, deterministic weights and token batches shared by the model tests."""

from __future__ import annotations

import math
import zlib

import torch

from pgolf_core.config import ModelConfig, deep_merge
from pgolf_core.model import GPT, build_model

# 4 layers, d 64, 4 heads (head dim 16), 2 KV heads, vocab 64: every code path, milliseconds per forward.
TINY = {"vocab_size": 64, "num_layers": 4, "model_dim": 64, "num_heads": 4, "num_kv_heads": 2}


def nest(overrides: dict) -> dict:
    """``{"mlp.mult": 3.0, "residual": {"ln_scale": True}}`` -> one nested dict (dotted keys as in YAML)."""
    out: dict = {}
    for key, value in overrides.items():
        *path, last = key.split(".")
        part = {last: value}
        for p in reversed(path):
            part = {p: part}
        out = deep_merge(out, part)
    return out


def tiny_cfg(**overrides) -> ModelConfig:
    """TINY with ``overrides``: core fields by name, sub-sections as dicts or dotted keys via ``**{...}``."""
    return ModelConfig.model_validate(deep_merge(TINY, nest(overrides)))


@torch.no_grad()
def perturb(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Give every parameter deterministic, name-keyed values so that zero-init paths are exercised.

    Constant-initialised tensors (zeros, ones, gains, [1, 0] mixes: at most 2 distinct values) keep their
    init plus noise, so init flags such as q_gain_init still matter; randomly initialised ones are
    replaced by N(0, 1/fan_in) noise. Two models that share a parameter name and shape therefore get
    the same value for it, whatever their construction order.
    """
    for name, p in model.named_parameters():
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        noise = torch.randn(p.shape, generator=g)
        if p.numel() == 0 or p.unique().numel() <= 2:
            p.add_(scale * noise)
        else:
            p.copy_(noise / math.sqrt(p.shape[-1]))
    return model


def tiny_model(loops_on: bool = False, **overrides) -> GPT:
    """A perturbed tiny model on CPU (SDPA); ``overrides`` as for ``tiny_cfg``."""
    torch.manual_seed(0)
    model = perturb(build_model(tiny_cfg(**overrides), device="cpu"))
    model.set_loops(loops_on)
    return model


def tokens(batch: int = 2, seq_len: int = 16, vocab: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
