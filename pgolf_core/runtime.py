"""Where a computation runs: the device of a model and bf16 autocast, spelled once for every room.

Autocast is bf16 on CUDA only: CPU runs stay fp32 (bf16 matmuls there are slow and the tests compare
against fp32 references), so asking for autocast on a CPU device is a no-op rather than an error.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def autocast_enabled(enabled: bool, device: torch.device | str) -> bool:
    """Whether ``autocast_context(device, enabled)`` switches bf16 autocast on: asked for, and on CUDA."""
    return bool(enabled) and torch.device(device).type == "cuda"


def autocast_context(device: torch.device | str, enabled: bool = True) -> AbstractContextManager:
    """bf16 autocast on a CUDA ``device`` when ``enabled``; otherwise a context that does nothing."""
    if autocast_enabled(enabled, device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (pgolf models live on one device)."""
    return next(model.parameters()).device
