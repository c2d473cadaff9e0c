"""Which quantization group each state-dict tensor belongs to: decided by module type and declared role.

Never by substrings of names (style.md G7): the challenge's ``CONTROL_TENSOR_NAME_PATTERNS`` meant a
renamed parameter silently changed the artifact. Here the attention linears are the q/k/v/proj of a
``CausalSelfAttention``, the MLP linears the up/down of an ``MLP``, the gate the projection of an
``AttnOutputGate``, the embedding the GPT's ``tok_emb`` (and an untied ``lm_head``: both are read by
the same final-norm output, records.md D9). Everything else is "other"; a tensor whose parameter role
is SCALAR is a *control* tensor (the baseline keeps those fp32 when small, records.md D1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from pgolf_core.model.attention import AttnOutputGate, CausalSelfAttention
from pgolf_core.model.gpt import GPT
from pgolf_core.model.mlp import MLP
from pgolf_core.model.roles import SCALAR, lookup_roles

GROUPS = ("embed", "attn", "mlp", "gate", "other")  # also the stream order of the grouped layout
QUANT_GROUPS = ("attn", "mlp", "embed", "gate")  # the groups with their own QuantGroupConfig


@dataclass(frozen=True)
class TensorClass:
    """group: one of GROUPS; role: the parameter's declared role (None for buffers); control: SCALAR role."""

    group: str
    role: str | None

    @property
    def control(self) -> bool:
        return self.role == SCALAR


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    for attr in ("module", "_orig_mod"):
        while isinstance(getattr(model, attr, None), nn.Module):
            model = getattr(model, attr)
    return model


def _group_params(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> group, from the module types that own the parameters."""
    out: dict[int, str] = {}
    for module in model.modules():
        if isinstance(module, CausalSelfAttention):
            for lin in (module.q, module.k, module.v, module.proj):
                out[id(lin.weight)] = "attn"
        elif isinstance(module, MLP):
            for lin in (module.up, module.down):
                out[id(lin.weight)] = "mlp"
        elif isinstance(module, AttnOutputGate):
            out[id(module.proj.weight)] = "gate"
        elif isinstance(module, GPT):
            out[id(module.tok_emb.weight)] = "embed"
            if module.lm_head is not None:
                out[id(module.lm_head.weight)] = "embed"
    return out


def classify(model: nn.Module) -> dict[str, TensorClass]:
    """state-dict key -> TensorClass for every entry of ``model.state_dict()``."""
    by_id = _group_params(model)
    roles = lookup_roles(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    out: dict[str, TensorClass] = {}
    for name in model.state_dict():
        p = params.get(name)
        group = by_id.get(id(p), "other") if p is not None else "other"
        out[name] = TensorClass(group, roles.get(name))
    return out


def resolve_state(
    model_or_state: nn.Module | Mapping[str, torch.Tensor], model: nn.Module | None
) -> tuple[dict[str, torch.Tensor], dict[str, TensorClass], nn.Module]:
    """(state dict, classes, model) from a model, or from a state dict plus the ``model`` it belongs to.

    A bare state dict carries no module types or roles, so it needs ``model=`` (any instance of the
    same architecture: only its structure is read). Keys must match exactly.
    """
    if isinstance(model_or_state, nn.Module):
        model = unwrap(model_or_state)
        state = {k: v.detach() for k, v in model.state_dict().items()}
    else:
        if model is None:
            raise ValueError(
                "a bare state dict does not say which tensors are attention, MLP, embedding or control; "
                "pass model= (a model of the same architecture, e.g. build_model(cfg.model))"
            )
        state = {k: v.detach() for k, v in model_or_state.items()}
    model = unwrap(model)
    classes = classify(model)
    missing, extra = sorted(set(classes) - set(state)), sorted(set(state) - set(classes))
    if missing or extra:
        raise ValueError(
            f"state dict does not match the model: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    return state, classes, model
