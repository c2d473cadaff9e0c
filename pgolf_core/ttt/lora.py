"""LoRA adapters on chosen projections of a GPT, for test-time training (LORA0, #1530).

LoRA(x) = (x A^T) B^T * scale with A ~ U(+-1/sqrt(in)), B = 0, so a fresh (or reset) adapter adds an
exact zero and the model scores as the base model, bit for bit. scale = alpha / rank when alpha > 0
(#1787 on: "decouples magnitude from rank"), else 1 (#1530-#1769).

Targets (1530 -> 1855 layout): ``q``, ``k``, ``v`` are parallel to the attention's q/k/v linears;
``o`` reads the attention's (normalized) input and adds to the attention output; ``mlp`` reads the
MLP's normalized input and adds to the MLP output; ``head`` reads the final hidden state and adds to
the pre-softcap logits. Adapters sit on physical layers, so with depth recurrence one adapter serves
every pass over its block (the records keep one per virtual layer slot).

Every adapter has ``slots`` independent copies (a leading batch dimension) so that a batch of
documents trains one adapter set per document (#1530 and later); ``slot_index`` maps the rows of
the current batch to slots. Shapes: B rows, T time, I in, O out, R rank, S slots.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TARGETS = ("q", "k", "v", "o", "mlp", "head")


class LoRA(nn.Module):
    """``slots`` independent low-rank adapters in -> out of rank ``rank``."""

    def __init__(
        self, slots: int, in_dim: int, out_dim: int, rank: int, scale: float, generator: torch.Generator
    ):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        # One draw shared by every slot: a document's adapters start the same whatever its slot, batch
        # or rank, so results do not depend on how documents are batched or dealt.
        a_1RI = (torch.rand(1, rank, in_dim, generator=generator) * 2 - 1) * bound
        a_SRI = a_1RI.repeat(slots, 1, 1)
        self.A = nn.Parameter(a_SRI)
        self.B = nn.Parameter(torch.zeros(slots, out_dim, rank))
        self.register_buffer("A_init", a_SRI.clone(), persistent=False)
        self.scale = scale

    @torch.no_grad()
    def reset(self) -> None:
        """Back to the initial A and B = 0 (an exact no-op adapter)."""
        self.A.copy_(self.A_init)
        self.B.zero_()

    def forward(self, x_BTI: Tensor, slot_index: Tensor | None) -> Tensor:
        a_SRI, b_SOR = (self.A, self.B) if slot_index is None else (self.A[slot_index], self.B[slot_index])
        dtype = x_BTI.dtype
        out_BTO = (x_BTI @ a_SRI.mT.to(dtype)) @ b_SOR.mT.to(dtype)
        return out_BTO * self.scale if self.scale != 1.0 else out_BTO


class LoRASet(nn.Module):
    """Adapters on ``targets`` of every block of ``model`` (plus the head), added by forward hooks.

    The base model is left as it is (callers freeze it); ``enabled = False`` switches every adapter
    off (the hooks return the base output untouched), e.g. while the phased variant trains the base.
    """

    def __init__(
        self, model: nn.Module, targets, rank: int, alpha: float = 0.0, slots: int = 1, seed: int = 0
    ):
        super().__init__()
        unknown = set(targets) - set(TARGETS)
        if unknown:
            raise ValueError(f"unknown LoRA targets {sorted(unknown)}; expected a subset of {TARGETS}")
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(seed)
        scale = alpha / rank if alpha > 0 else 1.0
        self.model = [model]  # a list: not registered as a submodule (its parameters are not ours)
        self.slot_index: Tensor | None = None
        self.enabled = True
        self.adapters = nn.ModuleDict()
        self._hooks = []
        D, V = model.cfg.model_dim, model.cfg.vocab_size
        for i, block in enumerate(model.blocks):
            attn = block.attn
            sites = {"q": attn.q, "k": attn.k, "v": attn.v, "o": attn, "mlp": block.mlp}
            for t in TARGETS[:5]:
                if t not in targets:
                    continue
                module = sites[t]
                in_dim, out_dim = (
                    (module.in_features, module.out_features) if isinstance(module, nn.Linear) else (D, D)
                )
                lora = LoRA(slots, in_dim, out_dim, rank, scale, gen)
                self.adapters[f"{t}{i}"] = lora
                self._hooks.append(module.register_forward_hook(self._hook(lora)))
        self.head = LoRA(slots, D, V, rank, scale, gen) if "head" in targets else None
        self.to(device)

    def _hook(self, lora: LoRA):
        def hook(module, args, output):
            if not self.enabled:
                return output
            return output + lora(args[0], self.slot_index).to(output.dtype)

        return hook

    def reset(self) -> None:
        for lora in self.adapters.values():
            lora.reset()
        if self.head is not None:
            self.head.reset()

    def remove(self) -> None:
        """Detach the hooks from the model."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def logits(self, x_BT: Tensor) -> Tensor:
        """The model's logits with the adapters applied (the head adapter before the softcap)."""
        model = self.model[0]
        if self.head is None or not self.enabled:
            return model.logits(x_BT)
        # Mirrors GPT.logits with one added term; tests pin it to GPT.logits when the adapter is zero.
        h_BTD = model.hidden(x_BT)
        z_BTV = F.linear(h_BTD, model.tok_emb.weight) if model.lm_head is None else model.lm_head(h_BTD)
        z_BTV = z_BTV + self.head(h_BTD, self.slot_index).to(z_BTV.dtype)
        return model.softcap(z_BTV)  # after the head adapter, as #1923 applies AsymLogit

    def nll(self, x_BT: Tensor, y_BT: Tensor) -> Tensor:
        logits_BTV = self.logits(x_BT)
        return F.cross_entropy(logits_BTV.flatten(0, 1), y_BT.flatten(), reduction="none").view_as(y_BT)
