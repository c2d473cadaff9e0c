"""The challenge's own weights in pgolf: load a baseline ``final_model.pt``; store tok_emb as it does.

The challenge's train_gpt.py (openai/parameter-golf) ends by saving ``base_model.state_dict()`` as
``final_model.pt``. Its baseline GPT computes the same function as pgolf's default model (checked to 1e-5
in tests/model/test_challenge_parity.py against a forward written from the challenge's formula) but
names some tensors differently:

    challenge (train_gpt.py)         pgolf
    blocks.{i}.attn.c_q.weight   ->  blocks.{i}.attn.q.weight
    blocks.{i}.attn.c_k.weight   ->  blocks.{i}.attn.k.weight
    blocks.{i}.attn.c_v.weight   ->  blocks.{i}.attn.v.weight
    blocks.{i}.mlp.fc.weight     ->  blocks.{i}.mlp.up.weight
    blocks.{i}.mlp.proj.weight   ->  blocks.{i}.mlp.down.weight
    everything else (tok_emb.weight, skip_weights, lm_head.weight, blocks.{i}.attn.proj.weight,
    blocks.{i}.attn.q_gain, blocks.{i}.attn_scale, blocks.{i}.mlp_scale, blocks.{i}.resid_mix): same name

Usage (score a baseline run's weights with pgolf's evaluation):

    model = build_model(cfg.model)                          # the baseline shape of the run
    load_challenge_state_dict(model, "final_model.pt")
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from os import PathLike

import torch
from torch import Tensor, nn

# pgolf's name for a per-block challenge name; names not listed are the same in both.
_BLOCK_RENAMES = {
    "attn.c_q.weight": "attn.q.weight",
    "attn.c_k.weight": "attn.k.weight",
    "attn.c_v.weight": "attn.v.weight",
    "mlp.fc.weight": "mlp.up.weight",
    "mlp.proj.weight": "mlp.down.weight",
}
_PGOLF_BLOCK_NAMES = {pgolf: challenge for challenge, pgolf in _BLOCK_RENAMES.items()}
_BLOCK_SAME = ("attn.proj.weight", "attn.q_gain", "attn_scale", "mlp_scale", "resid_mix")
_TOP_LEVEL = ("tok_emb.weight", "skip_weights", "lm_head.weight")


class ChallengeWeightsError(ValueError):
    """A challenge state dict that does not fit the pgolf model (one line, naming the key)."""


def pgolf_name(challenge_name: str) -> str | None:
    """pgolf's parameter name for a tensor name of the challenge's baseline GPT (None: not one of its)."""
    if challenge_name in _TOP_LEVEL:
        return challenge_name
    head, dot, rest = challenge_name.partition(".")
    index, dot2, local = rest.partition(".")
    if head != "blocks" or not dot or not dot2 or not index.isdigit():
        return None
    if local in _BLOCK_RENAMES:
        return f"blocks.{index}.{_BLOCK_RENAMES[local]}"
    return challenge_name if local in _BLOCK_SAME else None


def challenge_name(pgolf_param: str) -> str | None:
    """The challenge's name for a pgolf parameter (None: the challenge's baseline has no such tensor)."""
    head, _, rest = pgolf_param.partition(".")
    index, _, local = rest.partition(".")
    if head == "blocks" and index.isdigit() and local in _PGOLF_BLOCK_NAMES:
        return f"blocks.{index}.{_PGOLF_BLOCK_NAMES[local]}"
    return pgolf_param if pgolf_name(pgolf_param) == pgolf_param else None


def non_baseline_features(model: nn.Module) -> list[str]:
    """Forward features of ``model`` that the challenge's baseline lacks (they add no tensor, so the name
    check alone would not see them): partial or NTK-rescaled RoPE, XSA, windows, LN scale, GPT-J blocks,
    leaky MLP, depth recurrence, parallel lanes."""
    found = []
    plans = getattr(model, "plans", {})
    if plans and plans.get(True) != plans.get(False):
        found.append("depth recurrence")
    for i, block in enumerate(getattr(model, "blocks", [])):
        attn, mlp = block.attn, block.mlp
        checks = {
            "partial RoPE": attn.rotary.rope_dims != attn.head_dim,
            "NTK RoPE rescale": bool(attn.rotary.train_seq_len),
            "XSA": attn.xsa,
            "sliding window": bool(attn.window),
            "attention gate": attn.gate is not None,
            "LN scale": block.norm_scale != 1.0,
            "GPT-J parallel block": block.gptj,
            f"{mlp.activation} MLP": mlp.activation != "relu2",
        }
        found += [f"{what} (layer {i})" for what, on in checks.items() if on]
    return found


def pgolf_state_from_challenge(
    state: Mapping[str, Tensor], model: nn.Module, source: str = "state dict"
) -> dict[str, Tensor]:
    """``state`` (challenge names) renamed to ``model``'s names, strictly: every tensor of the model comes
    from exactly one tensor of ``state`` with the same shape. Raises ChallengeWeightsError naming the
    first offending key (``source`` names the file in the message)."""
    if not isinstance(state, Mapping):
        raise ChallengeWeightsError(
            f"{source}: expected a state dict (name -> tensor), got {type(state).__name__}"
        )
    if "__quant_format__" in state:
        raise ChallengeWeightsError(
            f"{source}: is a quantized export ({state['__quant_format__']}); pass the raw final_model.pt"
        )
    features = non_baseline_features(model)
    if features:
        raise ChallengeWeightsError(
            f"{source}: the pgolf model has {', '.join(features)}, which the challenge's baseline lacks; "
            "build it from the baseline config"
        )
    expected = model.state_dict()
    extra = [n for n in expected if challenge_name(n) is None]
    if extra:
        raise ChallengeWeightsError(
            f"{source}: the pgolf model has {extra[0]!r}, which the challenge's baseline does not "
            f"({len(extra)} such tensors); build it from the baseline config"
        )
    renamed: dict[str, Tensor] = {}
    for name, tensor in state.items():
        target = pgolf_name(name) if isinstance(name, str) else None
        if target is None or target not in expected:
            raise ChallengeWeightsError(
                f"{source}: unexpected key {name!r} (not a tensor of the challenge's baseline GPT "
                f"with {len(model.blocks)} blocks)"
            )
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            raise ChallengeWeightsError(f"{source}: {name!r} is not a floating-point tensor")
        want = tuple(expected[target].shape)
        if tuple(tensor.shape) != want:
            raise ChallengeWeightsError(
                f"{source}: {name!r} has shape {tuple(tensor.shape)}, pgolf's {target} expects {want} "
                "(check the model shape: layers, dims, heads, kv heads, mlp_mult, vocab, tied embeddings)"
            )
        renamed[target] = tensor
    missing = [n for n in expected if n not in renamed]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ChallengeWeightsError(
            f"{source}: missing key {challenge_name(missing[0])!r} (pgolf's {missing[0]}){more}"
        )
    return renamed


def read_challenge_state_dict(path: str | PathLike) -> dict[str, Tensor]:
    """``torch.load(path, weights_only=True)`` on CPU, with a one-line error for an unreadable file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ChallengeWeightsError(f"{path}: no such file") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        # not a torch file, a zlib-compressed export, a truncated zip, a pickle that needs code to load
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ChallengeWeightsError(
            f"{path}: not a torch state dict readable with weights_only=True ({type(e).__name__}: {first})"
        ) from None
    return state


@torch.no_grad()
def load_challenge_state_dict(
    model: nn.Module, path_or_state: str | PathLike | Mapping[str, Tensor]
) -> nn.Module:
    """Load a challenge-format baseline state dict (``final_model.pt`` of openai/parameter-golf's
    train_gpt.py, or the dict itself) into pgolf's ``model`` and return the model.

    ``model`` must be pgolf's GPT built with the run's baseline shape (``build_model(cfg.model)`` with
    vocab_size, num_layers, model_dim, num_heads, num_kv_heads, mlp_mult, tie_embeddings and
    logit_softcap / rope_base as the run had them) and no record feature on. Strict: a missing,
    unexpected or mis-shaped key, or a model feature the baseline lacks, raises ChallengeWeightsError
    naming it. Each tensor is copied into the model's own parameter, so the model keeps its dtypes and
    device (the challenge's CUDA run stores tok_emb in bf16: loaded into fp32 it is exact).
    """
    if isinstance(path_or_state, Mapping):
        state, source = path_or_state, "state dict"
    else:
        state, source = read_challenge_state_dict(path_or_state), str(path_or_state)
    renamed = pgolf_state_from_challenge(state, model, source)
    model.load_state_dict(renamed, strict=True)
    return model


# --------------------------------------------------------------------------------------------------
# Token-embedding storage dtype
# --------------------------------------------------------------------------------------------------


def embed_storage_dtype(device: torch.device | str, autocast: bool, bf16: bool = True) -> torch.dtype:
    """The storage dtype of tok_emb for a run: bf16 when ``bf16`` is asked for on CUDA under bf16
    autocast, fp32 otherwise (CPU, or full-precision CUDA runs, whose fp32 linears could not take a
    bf16 residual stream).

    The challenge's train_gpt.py casts the whole model to bf16 and then only its linears and its small /
    control tensors back to fp32, so its token embedding (tied with the head) is stored, and updated by
    Adam, in bf16; its embedding output and so the start of the residual stream are bf16 too.
    """
    return torch.bfloat16 if bf16 and autocast and torch.device(device).type == "cuda" else torch.float32


@torch.no_grad()
def set_embed_storage_(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store ``model.tok_emb.weight`` in ``dtype`` in place (same Parameter object, so optimizer routing by
    role and anything holding the parameter keep working); call before building the optimizers."""
    weight = model.tok_emb.weight
    if weight.dtype != dtype:
        weight.data = weight.data.to(dtype)
    return model
