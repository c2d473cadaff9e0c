"""Every ModelConfig flag trains (finite loss, gradients everywhere) and changes the model (style.md G5)."""

from __future__ import annotations

import pytest
import torch

from pgolf_core.config import ModelConfig
from pgolf_core.model import build_model, count_parameters
from tests.model.helpers import TINY, tiny_cfg, tiny_model, tokens

LOOP = dict(loop_start=1, loop_end=2, num_loops=1)

# id -> overrides of the tiny config; each case must change the logits or the parameter count.
FLAG_CASES = {
    "mlp_mult": dict(mlp_mult=3.0),
    "activation": dict(activation="leaky_relu2"),
    "leaky_slope": dict(activation="leaky_relu2", leaky_slope=0.1),
    "tie_embeddings": dict(tie_embeddings=False),
    "rope_base": dict(rope_base=100.0),
    "rope_dims": dict(rope_dims=8),
    "rope_train_seq_len": dict(rope_dims=8, rope_train_seq_len=8),
    "q_gain_init": dict(q_gain_init=4.0),
    "logit_softcap": dict(logit_softcap=3.0),
    "ln_scale": dict(ln_scale=True),
    "xsa_last_n": dict(xsa_last_n=2),
    "skip_gates": dict(skip_gates=True),
    "num_loops": LOOP,
    "gptj": dict(parallel_residual="gptj", parallel_start_layer=2),
    "two_lane": dict(parallel_residual="two_lane", parallel_start_layer=2),
    "smear_v1": dict(smear_gate="v1"),
    "smear_v2": dict(smear_gate="v2", smear_width=4),
    "smear_v2_no_bos_fix": dict(smear_gate="v2", smear_bos_fix=False),
    "bigram": dict(bigram_vocab=32, bigram_dim=16),
    "value_embed": dict(ve_dim=16, ve_layers=[1, 3]),
    "attn_gate_dense": dict(attn_gate="dense"),
    "attn_gate_sparse": dict(attn_gate="sparse", attn_gate_width=4, attn_gate_scale=0.5),
    "window": dict(window_size=4),
    "window_layers": dict(window_size=4, window_layers=[0]),
    "kitchen_sink": dict(
        activation="leaky_relu2", rope_dims=8, ln_scale=True, xsa_last_n=4, skip_gates=True,
        parallel_residual="two_lane", parallel_start_layer=2, smear_gate="v2", attn_gate="sparse",
        bigram_vocab=32, ve_dim=16, ve_layers=[3], window_size=6, ortho_init=True, **LOOP,
    ),
}
# Fields not covered by FLAG_CASES, each with the test that covers it.
OTHER_FIELDS = {
    "vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads",  # test_param_counts, TINY
    "tied_embed_init_std", "attn_gate_init_std", "ortho_init",  # test_*_init_* below
    "loop_start", "loop_end",  # with num_loops (LOOP); test_recurrence
    "parallel_start_layer",  # with gptj / two_lane
    "smear_width", "smear_bos_fix",  # smear_v2 cases; test_embeddings BOS tests
    "bigram_dim", "attn_gate_width", "attn_gate_scale",  # with their flags above
    "ve_layers",  # value_embed
    "window_size",  # window
    "loop_enable_frac",  # a training schedule knob: the model never reads it
    "attn_backend",  # test_attention_backend
}


def test_flag_cases_cover_every_model_config_field():
    """Every ModelConfig field is exercised by a flag case or named with the test that covers it."""
    covered = {key for case in FLAG_CASES.values() for key in case} | OTHER_FIELDS
    assert set(ModelConfig.model_fields) - covered == set()


@pytest.fixture(scope="module")
def baseline_logits():
    with torch.no_grad():
        return tiny_model()(tokens()), count_parameters(tiny_model())


@pytest.mark.parametrize("overrides", FLAG_CASES.values(), ids=list(FLAG_CASES))
def test_flag_trains_and_changes_the_model(overrides, baseline_logits):
    """Finite loss, a non-zero finite gradient for every parameter, logits or count differ from baseline."""
    ids = tokens()
    ids[:, 5] = 1  # a BOS inside the sequence exercises the smear BOS fix
    model = tiny_model(looping=True, **overrides)
    loss = model(ids, tokens(seed=1))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
    base_logits, base_count = baseline_logits
    with torch.no_grad():
        changed = (model(tokens()) - base_logits).abs().max() > 1e-4
    assert changed or count_parameters(model) != base_count


def test_defaults_flags_off_is_the_baseline_model():
    """With every flag at its default the tiny model has exactly the baseline's parameter names."""
    names = {n for n, _ in build_model(tiny_cfg(), device="cpu").named_parameters()}
    per_block = {"attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.proj.weight", "attn.q_gain",
                 "mlp.up.weight", "mlp.down.weight", "resid_mix", "attn_scale", "mlp_scale"}
    expected = {"tok_emb.weight", "skip_weights"} | {f"blocks.{i}.{n}" for i in range(4) for n in per_block}
    assert names == expected


def test_zero_init_paths_receive_gradient_at_init():
    """At init (no perturbation), the zero-init bigram table and output projections get a gradient.

    (V-side parameters such as the value-embedding projection start moving one step later: their
    gradient flows through the attention out-projection, which is zero at init.)
    """
    torch.manual_seed(0)
    cfg = tiny_cfg(bigram_vocab=32, bigram_dim=16, ve_dim=16, ve_layers=[3], ortho_init=True)
    model = build_model(cfg, device="cpu")
    model(tokens(), tokens(seed=1)).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("bigram.table.weight", "blocks.0.attn.proj.weight", "blocks.0.mlp.down.weight"):
        assert grads[name].abs().sum() > 0, name


def test_ortho_init_makes_large_matrices_orthogonal_and_keeps_zero_inits():
    """ortho_init: Q, MLP-up, bigram proj (dims >= 64) orthogonal; K (32 rows), out-proj, down untouched."""
    model = build_model(tiny_cfg(ortho_init=True, bigram_vocab=32, bigram_dim=64), device="cpu")
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    torch.testing.assert_close(attn.q.weight @ attn.q.weight.T, torch.eye(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(mlp.up.weight.T @ mlp.up.weight, torch.eye(64), atol=1e-5, rtol=0)
    proj = model.bigram.proj.weight
    torch.testing.assert_close(proj.T @ proj, torch.eye(64), atol=1e-5, rtol=0)
    assert not torch.allclose(attn.k.weight @ attn.k.weight.T, torch.eye(32), atol=1e-2)
    assert attn.proj.weight.abs().sum() == 0 and mlp.down.weight.abs().sum() == 0
    assert model.tok_emb.weight.std() < 0.01  # the embedding keeps its N(0, 0.005^2) init


def test_tied_embed_init_std_sets_embedding_std():
    """The tied embedding is N(0, tied_embed_init_std^2)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**TINY, "vocab_size": 1024}, tied_embed_init_std=0.02), device="cpu")
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_attn_gate_init_std_sets_dense_gate_std_and_sparse_gate_starts_at_zero():
    """Dense gate W_g ~ N(0, std^2) (g ~ 0.5); the sparse gate weight is zero (g = sigmoid(0) = 0.5)."""
    torch.manual_seed(0)
    dense = build_model(ModelConfig(**{**TINY, "model_dim": 256, "num_heads": 8}, attn_gate="dense",
                                    attn_gate_init_std=0.05), device="cpu")
    assert dense.blocks[0].attn.gate.proj.weight.shape == (8, 256)
    assert dense.blocks[0].attn.gate.proj.weight.std().item() == pytest.approx(0.05, rel=0.1)
    sparse = build_model(tiny_cfg(attn_gate="sparse", attn_gate_width=12), device="cpu")
    assert sparse.blocks[0].attn.gate.proj.weight.shape == (4, 12)
    assert sparse.blocks[0].attn.gate.proj.weight.abs().sum() == 0
