"""A challenge-format state dict scores the same in pgolf as in the challenge's own formula.

``challenge_loss`` below restates the baseline GPT of openai/parameter-golf's train_gpt.py over a state
dict with the challenge's tensor names, independently of pgolf's model code; the same dict is then loaded
into pgolf's GPT with ``load_challenge_state_dict`` and the two losses must agree to 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pgolf_core.config import OptimConfig
from pgolf_core.model import build_model
from pgolf_core.model.challenge_weights import (
    ChallengeWeightsError,
    embed_storage_dtype,
    load_challenge_state_dict,
    set_embed_storage_,
)
from pgolf_core.model.roles import EMBED, role_of
from pgolf_core.optim.groups import build_optimizers
from tests.model.helpers import tiny_cfg, tokens

V, D, H, G = 64, 64, 4, 2  # tests.model.helpers.TINY: head dim 16, 2 query heads per kv head
K, MLP_MULT, BASE, SOFTCAP = D // H, 2, 10000.0, 30.0


def challenge_state(num_layers: int, tied: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the names (and shapes) of the challenge baseline GPT's state_dict()."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    def matrix(rows: int, cols: int) -> torch.Tensor:
        return randn(rows, cols) / math.sqrt(cols)

    state = {"tok_emb.weight": 0.3 * randn(V, D)}  # logits of a few units, not saturating the softcap
    n_skip = min(num_layers // 2, num_layers - num_layers // 2)
    state["skip_weights"] = 1.0 + 0.3 * randn(n_skip, D)
    for i in range(num_layers):
        b = f"blocks.{i}."
        state[b + "attn.c_q.weight"] = matrix(D, D)
        state[b + "attn.c_k.weight"] = matrix(G * K, D)
        state[b + "attn.c_v.weight"] = matrix(G * K, D)
        state[b + "attn.proj.weight"] = matrix(D, D)
        state[b + "attn.q_gain"] = 1.5 + 0.3 * randn(H)
        state[b + "mlp.fc.weight"] = matrix(MLP_MULT * D, D)
        state[b + "mlp.proj.weight"] = matrix(D, MLP_MULT * D)
        state[b + "attn_scale"] = 1.0 + 0.2 * randn(D)
        state[b + "mlp_scale"] = 1.0 + 0.2 * randn(D)
        state[b + "resid_mix"] = torch.stack((torch.ones(D), torch.zeros(D))) + 0.3 * randn(2, D)
    if not tied:
        state["lm_head.weight"] = matrix(V, D)
    return state


# --------------------------------------------------------------------------------------------------
# The challenge's baseline forward, stated from train_gpt.py (openai/parameter-golf)
# --------------------------------------------------------------------------------------------------


def rms(x: torch.Tensor) -> torch.Tensor:
    """F.rms_norm without a weight and with its default eps (the dtype's machine epsilon)."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)


def rope(x_BTHK: torch.Tensor) -> torch.Tensor:
    """Per position: halves x1 | x2 of each head; inv_freq_i = 1 / BASE^(2i / K), angle = t inv_freq;
    x1' = x1 cos + x2 sin, x2' = x2 cos - x1 sin."""
    half = K // 2
    inv_freq = torch.tensor([1.0 / BASE ** (2 * i / K) for i in range(half)], dtype=x_BTHK.dtype)
    out = torch.empty_like(x_BTHK)
    for t in range(x_BTHK.size(1)):
        cos, sin = torch.cos(t * inv_freq), torch.sin(t * inv_freq)
        x1, x2 = x_BTHK[:, t, :, :half], x_BTHK[:, t, :, half:]
        out[:, t, :, :half] = x1 * cos + x2 * sin
        out[:, t, :, half:] = x2 * cos - x1 * sin
    return out


def attention(q_BTHK, k_BTGK, v_BTGK) -> torch.Tensor:
    """Causal softmax(q k^T / sqrt(K)) v, query head h reading kv head h // (H / G), one query at a time."""
    T = q_BTHK.size(1)
    y = torch.empty_like(q_BTHK)
    for t in range(T):
        for h in range(H):
            g = h // (H // G)
            scores = torch.einsum("bk,bsk->bs", q_BTHK[:, t, h], k_BTGK[:, : t + 1, g]) / math.sqrt(K)
            y[:, t, h] = torch.einsum("bs,bsk->bk", scores.softmax(-1), v_BTGK[:, : t + 1, g])
    return y


def challenge_block(sd: dict, i: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    def w(name: str) -> torch.Tensor:
        return sd[f"blocks.{i}.{name}"]

    B, T, _ = x.shape
    x = w("resid_mix")[0] * x + w("resid_mix")[1] * x0
    h = rms(x)
    q = rms((h @ w("attn.c_q.weight").T).reshape(B, T, H, K))
    k = rms((h @ w("attn.c_k.weight").T).reshape(B, T, G, K))
    v = (h @ w("attn.c_v.weight").T).reshape(B, T, G, K)
    q = rope(q) * w("attn.q_gain")[:, None]
    k = rope(k)
    y = attention(q, k, v).reshape(B, T, D)
    x = x + w("attn_scale") * (y @ w("attn.proj.weight").T)
    u = torch.relu(rms(x) @ w("mlp.fc.weight").T).square()
    return x + w("mlp_scale") * (u @ w("mlp.proj.weight").T)


def challenge_loss(sd: dict, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean CE of the baseline: U-Net halves (first L // 2 blocks push, later ones pop with skip_weights),
    final RMS norm, tied (or lm_head) projection, logits = SOFTCAP tanh(z / SOFTCAP)."""
    sd = {name: t.double() for name, t in sd.items()}  # the truth in float64
    num_layers = sum(1 for name in sd if name.endswith(".attn.c_q.weight"))
    n_enc = num_layers // 2
    x = x0 = rms(sd["tok_emb.weight"][ids])
    skips = []
    for i in range(n_enc):
        x = challenge_block(sd, i, x, x0)
        skips.append(x)
    for i in range(num_layers - n_enc):
        if skips:
            x = x + sd["skip_weights"][i] * skips.pop()
        x = challenge_block(sd, n_enc + i, x, x0)
    head = sd.get("lm_head.weight", sd["tok_emb.weight"])
    logits = SOFTCAP * torch.tanh((rms(x) @ head.T) / SOFTCAP)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def pgolf_model(num_layers: int, tied: bool = True, **overrides):
    cfg = tiny_cfg(num_layers=num_layers, tie_embeddings=tied, **{"mlp.mult": MLP_MULT}, **overrides)
    return build_model(cfg, device="cpu").eval()


# --------------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_layers", "tied"), [(4, True), (5, True), (5, False)])
def test_challenge_weights_score_the_same_in_pgolf(tmp_path, num_layers, tied):
    """final_model.pt written with the challenge's names: pgolf's loss equals the challenge formula's."""
    state = challenge_state(num_layers, tied)
    path = tmp_path / "final_model.pt"
    torch.save(state, path)
    ids, targets = tokens(seed=1), tokens(seed=2)
    model = load_challenge_state_dict(pgolf_model(num_layers, tied), path)
    with torch.no_grad():
        got = model(ids, targets).item()
    expected = challenge_loss(state, ids, targets).item()
    assert 3.0 < expected < 10.0  # a non-trivial loss (ln 64 = 4.16 for a uniform guess)
    assert abs(got - expected) < 1e-5, (got, expected)


def test_bf16_tok_emb_as_the_challenge_saves_it_loads_exactly(tmp_path):
    """The challenge's CUDA run stores tok_emb in bf16; loading into fp32 keeps the exact values."""
    state = challenge_state(4)
    state["tok_emb.weight"] = state["tok_emb.weight"].bfloat16()
    torch.save(state, tmp_path / "final_model.pt")
    model = load_challenge_state_dict(pgolf_model(4), tmp_path / "final_model.pt")
    assert model.tok_emb.weight.dtype == torch.float32
    assert torch.equal(model.tok_emb.weight, state["tok_emb.weight"].float())
    ids, targets = tokens(seed=1), tokens(seed=2)
    with torch.no_grad():
        got = model(ids, targets).item()
    assert abs(got - challenge_loss(state, ids, targets).item()) < 1e-5


# --------------------------------------------------------------------------------------------------
# Strictness: one-line errors naming the key
# --------------------------------------------------------------------------------------------------


def _load_error(state, model=None) -> str:
    with pytest.raises(ChallengeWeightsError) as info:
        load_challenge_state_dict(model or pgolf_model(4), state)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_key_is_named():
    state = challenge_state(4)
    del state["blocks.2.mlp.fc.weight"]
    assert "missing key 'blocks.2.mlp.fc.weight' (pgolf's blocks.2.mlp.up.weight)" in _load_error(state)


def test_unexpected_keys_are_named():
    state = challenge_state(4)
    state["blocks.0.attn.rotary.inv_freq"] = torch.ones(8)
    assert "unexpected key 'blocks.0.attn.rotary.inv_freq'" in _load_error(state)
    state = challenge_state(5)  # one block more than the model
    assert "unexpected key 'blocks.4." in _load_error(state)
    state = challenge_state(4, tied=False)  # an lm_head for a tied model
    assert "unexpected key 'lm_head.weight'" in _load_error(state)


def test_mis_shaped_key_is_named():
    state = challenge_state(4)
    state["blocks.1.attn.c_k.weight"] = torch.zeros(D, D)  # as if num_kv_heads were H
    message = _load_error(state)
    assert (
        "'blocks.1.attn.c_k.weight' has shape (64, 64), pgolf's blocks.1.attn.k.weight expects (32, 64)"
        in message
    )


def test_model_with_record_features_is_refused():
    """Features without tensors (XSA, partial RoPE) and with tensors (bigram) both refuse to load."""
    state = challenge_state(4)
    assert "XSA (layer 3)" in _load_error(state, pgolf_model(4, **{"attention.xsa_last_n": 1}))
    assert "partial RoPE" in _load_error(state, pgolf_model(4, **{"rotary.dims": 8}))
    assert "'bigram." in _load_error(state, pgolf_model(4, **{"embeddings.bigram.buckets": 16}))


def test_unreadable_files_give_one_line_errors(tmp_path):
    for path, expected in (
        (tmp_path / "absent.pt", "no such file"),
        (tmp_path / "junk.pt", "not a torch state dict readable with weights_only=True"),
    ):
        if path.name == "junk.pt":
            path.write_bytes(b"\x78\x9c not a torch file")
        with pytest.raises(ChallengeWeightsError) as info:
            load_challenge_state_dict(pgolf_model(4), path)
        assert str(info.value).startswith(str(path)) and expected in str(info.value)
        assert "\n" not in str(info.value)
    torch.save({"__quant_format__": "int8_clean_per_row_v1", "quantized": {}}, tmp_path / "q.pt")
    with pytest.raises(ChallengeWeightsError, match="quantized export"):
        load_challenge_state_dict(pgolf_model(4), tmp_path / "q.pt")


# --------------------------------------------------------------------------------------------------
# tok_emb storage dtype (the challenge keeps it in bf16 on CUDA)
# --------------------------------------------------------------------------------------------------


def test_embed_storage_dtype_is_bf16_only_on_cuda_under_autocast():
    assert embed_storage_dtype("cuda", autocast=True) == torch.bfloat16
    assert embed_storage_dtype("cuda", autocast=True, bf16=False) == torch.float32
    assert embed_storage_dtype("cuda", autocast=False) == torch.float32
    assert embed_storage_dtype("cpu", autocast=True) == torch.float32


def test_bf16_tok_emb_trains_and_stays_bf16():
    """Same Parameter (role kept, routed to the embedding group), bf16 after an AdamW step under autocast."""
    model = pgolf_model(4).train()
    weight = model.tok_emb.weight
    set_embed_storage_(model, torch.bfloat16)
    assert model.tok_emb.weight is weight and weight.dtype == torch.bfloat16 and role_of(weight) == EMBED
    opt = build_optimizers(model, OptimConfig(), tie_embeddings=True)
    before = weight.detach().clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(tokens(seed=1), tokens(seed=2))
    loss.backward()
    opt.step()
    assert weight.dtype == torch.bfloat16 and not torch.equal(weight, before)
    assert all(p.dtype == torch.float32 for name, p in model.named_parameters() if name != "tok_emb.weight")
