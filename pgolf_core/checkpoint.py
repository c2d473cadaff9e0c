"""Checkpoint files: written atomically, read back with ``weights_only=True`` (tensors and plain values only).

A training run keeps ``checkpoints/last.pt`` (the full training state, for resume), ``final_raw.pt`` and
``final_ema.pt`` (weights) and ``hessians.pt`` (GPTQ calibration); the pipeline and the studies read them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pgolf_core.atomic import atomic_write


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
