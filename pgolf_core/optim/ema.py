"""Exponential moving average of the weights (from the #287-era records on; EMA 0.997 measured about -0.0006
bpb; #1855 uses 0.9965).

#374 lineage onwards keeps an fp32 shadow of the whole state dict, updated after every optimizer step and
loaded into the model at the end of training, before evaluation and quantization. GL README: EMA 0.997
is worth ~-0.0006 bpb; later records use 0.9965.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EMA:
    """fp32 shadow ``ema <- decay * ema + (1 - decay) * w`` of every floating tensor of a state dict.

    Pass the plain module (not a ``torch.compile`` wrapper, whose state-dict keys carry a prefix).
    Integer buffers are not averaged and ``copy_to`` leaves them alone.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, Tensor] = {
            name: t.detach().float().clone()
            for name, t in model.state_dict().items()
            if t.is_floating_point()
        }

    def _floating(self, model: nn.Module) -> list[Tensor]:
        state = model.state_dict()
        if state.keys() & self.shadow.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - state.keys())
            raise KeyError(f"model lacks EMA tensors {missing}")
        return [state[name] for name in self.shadow]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards the model's current weights (call after each optimizer step)."""
        weights = [t.float() for t in self._floating(model)]
        # lerp (ema + (1 - d)(w - ema)) rather than d*ema + (1 - d)*w: it leaves ema exactly equal to w
        # when they already agree, so constant weights are a fixed point even in floating point.
        torch._foreach_lerp_(list(self.shadow.values()), weights, 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the shadow into the model, casting each tensor to the model's dtype."""
        for target, avg in zip(self._floating(model), self.shadow.values()):
            target.copy_(avg.to(target.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["shadow"].keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - state["shadow"].keys())
            unexpected = sorted(state["shadow"].keys() - self.shadow.keys())
            raise KeyError(f"EMA state does not match the model: missing {missing}, unexpected {unexpected}")
        self.decay = float(state["decay"])
        for name, t in state["shadow"].items():
            self.shadow[name].copy_(t)
