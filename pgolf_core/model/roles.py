"""Parameter roles: every trainable parameter declares, at construction, what kind of tensor it is.

Optimizer routing (pgolf_core/optim/groups.py) and, later, quantization act on these roles, never on
substrings of parameter names: renaming a parameter cannot silently move it to
another optimizer or another quantizer.
"""

from __future__ import annotations

from torch import nn

MATRIX = "matrix"  # 2-D weights of the blocks (Q, K, V, O, MLP up/down) -> Muon
EMBED = "embed"  # the token embedding (tied LM head when tie_embeddings) -> Adam, embedding LR
HEAD = "head"  # an untied LM head -> Adam, head LR
TABLE = "table"  # auxiliary embedding tables (BigramHash, value embeddings) -> Adam, table LR
SCALAR = "scalar"  # gains, scales, mixes, gates, lambdas, small projections -> Adam, scalar LR
ROLES = (MATRIX, EMBED, HEAD, TABLE, SCALAR)

_ATTR = "_pgolf_role"


def set_role(param: nn.Parameter, role: str) -> nn.Parameter:
    if role not in ROLES:
        raise ValueError(f"unknown parameter role {role!r}; expected one of {ROLES}")
    setattr(param, _ATTR, role)
    return param


def role_of(param: nn.Parameter) -> str | None:
    return getattr(param, _ATTR, None)


_RECORD = "_pgolf_roles"


def record_roles(model: nn.Module) -> None:
    """Remember every parameter's role on the module itself (by name).

    Roles live as attributes on the Parameter objects, which ``copy.deepcopy`` does not carry over;
    the recorded name -> role dict is an ordinary attribute, so copies of a model keep their roles.
    Call it at the end of a model's ``__init__``.
    """
    object.__setattr__(model, _RECORD, {name: role_of(p) for name, p in model.named_parameters()})


def lookup_roles(model: nn.Module) -> dict[str, str | None]:
    """name -> role (None where undeclared), from the parameters or from ``record_roles``."""
    recorded = getattr(model, _RECORD, {})
    return {name: role_of(p) or recorded.get(name) for name, p in model.named_parameters()}


def param_roles(model: nn.Module) -> dict[str, str]:
    """fully-qualified name -> role for every parameter; raises if one has no role."""
    roles = lookup_roles(model)
    missing = [name for name, role in roles.items() if role is None]
    if missing:
        raise ValueError(f"parameters without a declared role: {missing}")
    return roles
