"""Every ModelConfig flag trains (finite loss, gradients everywhere) and changes the model; every knob
that only acts under another flag (leaky_slope under leaky_relu2, ...) changes the output when it
changes, and does what its formula says."""

from __future__ import annotations

import pytest
import torch

from pgolf_core.config import ModelConfig, describe_schema
from pgolf_core.model import build_model, count_parameters
from pgolf_core.model.attention import AttnOutputGate
from pgolf_core.model.mlp import MLP
from tests.model.helpers import TINY, tiny_cfg, tiny_model, tokens

LOOP = {"residual.loops.start": 1, "residual.loops.end": 2, "residual.loops.count": 1}

# id -> dotted overrides of the tiny config; each case must change the logits or the parameter count.
FLAG_CASES = {
    "mlp.mult": {"mlp.mult": 3.0},
    "mlp.activation": {"mlp.activation": "leaky_relu2"},
    "tie_embeddings": {"tie_embeddings": False},
    "rotary.base": {"rotary.base": 100.0},
    "rotary.dims": {"rotary.dims": 8},
    "rotary.train_seq_len": {"rotary.dims": 8, "rotary.train_seq_len": 8},
    "attention.q_gain_init": {"attention.q_gain_init": 4.0},
    "logit_softcap": {"logit_softcap": 3.0},
    "residual.ln_scale": {"residual.ln_scale": True},
    "attention.xsa_last_n": {"attention.xsa_last_n": 2},
    "residual.skip_gates": {"residual.skip_gates": True},
    "residual.loops": LOOP,
    "gptj": {"residual.parallel.kind": "gptj", "residual.parallel.start_layer": 2},
    "two_lane": {"residual.parallel.kind": "two_lane", "residual.parallel.start_layer": 2},
    "smear_v1": {"embeddings.smear.kind": "v1"},
    "smear_v2": {"embeddings.smear.kind": "v2", "embeddings.smear.width": 4},
    "smear_v2_no_bos_fix": {"embeddings.smear.kind": "v2", "embeddings.smear.bos_fix": False},
    "bigram": {"embeddings.bigram.buckets": 32, "embeddings.bigram.dim": 16},
    "value_embed": {"embeddings.value.dim": 16, "embeddings.value.layers": [1, 3]},
    "attn_gate_dense": {"attention.gate.kind": "dense"},
    "attn_gate_sparse": {
        "attention.gate.kind": "sparse",
        "attention.gate.width": 4,
        "attention.gate.scale": 0.5,
    },
    "window": {"attention.window.size": 4},
    "window_layers": {"attention.window.size": 4, "attention.window.layers": [0]},
    "key_offset": {"rotary.dims": 8, "attention.key_offset.enabled": True},
    "kitchen_sink": {
        "mlp.activation": "leaky_relu2",
        "rotary.dims": 8,
        "residual.ln_scale": True,
        "attention.xsa_last_n": 4,
        "residual.skip_gates": True,
        "residual.parallel.kind": "two_lane",
        "residual.parallel.start_layer": 2,
        "embeddings.smear.kind": "v2",
        "attention.gate.kind": "sparse",
        "embeddings.bigram.buckets": 32,
        "embeddings.value.dim": 16,
        "embeddings.value.layers": [3],
        "attention.window.size": 6,
        "attention.varlen.enabled": True,
        "attention.key_offset.enabled": True,
        "ortho_init": True,
        **LOOP,
    },
}

# Knobs that only act under another flag: id -> (the enabling overrides, knob, value a, value b).
DEPENDENT_CASES = {
    "mlp.leaky_slope": ({"mlp.activation": "leaky_relu2"}, "mlp.leaky_slope", 0.5, 0.1),
    "rotary.train_seq_len": ({"rotary.dims": 8}, "rotary.train_seq_len", 0, 8),
    "rotary.dims": ({}, "rotary.dims", 8, 4),
    "attention.xsa_last_n": ({}, "attention.xsa_last_n", 1, 3),
    "attention.gate.width": ({"attention.gate.kind": "sparse"}, "attention.gate.width", 4, 12),
    "attention.gate.scale": ({"attention.gate.kind": "sparse"}, "attention.gate.scale", 1.0, 0.5),
    "attention.window.size": ({}, "attention.window.size", 4, 2),
    "attention.window.layers": ({"attention.window.size": 4}, "attention.window.layers", [], [0]),
    "embeddings.smear.width": ({"embeddings.smear.kind": "v2"}, "embeddings.smear.width", 4, 12),
    "embeddings.smear.bos_fix": ({"embeddings.smear.kind": "v2"}, "embeddings.smear.bos_fix", True, False),
    "embeddings.smear.bos_fix[v1]": ({"embeddings.smear.kind": "v1"}, "embeddings.smear.bos_fix", None, True),
    "embeddings.bigram.bos_fix": (
        {"embeddings.bigram.buckets": 32},
        "embeddings.bigram.bos_fix",
        False,
        True,
    ),
    "attention.varlen.enabled": ({}, "attention.varlen.enabled", False, True),
    "attention.varlen.max_doc_len": (
        {"attention.varlen.enabled": True},
        "attention.varlen.max_doc_len",
        16,
        4,
    ),
    "attention.key_offset.layers": (
        {"rotary.dims": 8, "attention.key_offset.enabled": True},
        "attention.key_offset.layers",
        [],
        [1],
    ),
    "attention.key_offset.bos_fix": (
        {"rotary.dims": 8, "attention.key_offset.enabled": True},
        "attention.key_offset.bos_fix",
        True,
        False,
    ),
    "embeddings.bigram.dim": ({"embeddings.bigram.buckets": 32}, "embeddings.bigram.dim", 16, 8),
    "embeddings.bigram.buckets": ({}, "embeddings.bigram.buckets", 32, 16),
    "embeddings.value.dim": ({"embeddings.value.layers": [1]}, "embeddings.value.dim", 16, 8),
    "embeddings.value.layers": ({"embeddings.value.dim": 16}, "embeddings.value.layers", [1], [3]),
    "residual.loops.start": ({**LOOP}, "residual.loops.start", 1, 0),
    "residual.loops.end": ({**LOOP}, "residual.loops.end", 2, 1),
    "residual.loops.count": ({**LOOP}, "residual.loops.count", 1, 2),
    "residual.parallel.start_layer[gptj]": (
        {"residual.parallel.kind": "gptj"},
        "residual.parallel.start_layer",
        1,
        2,
    ),
    "residual.parallel.start_layer[two_lane]": (
        {"residual.parallel.kind": "two_lane"},
        "residual.parallel.start_layer",
        2,
        3,  # lanes start in the decoder
    ),
}

# Fields not covered above, each with the test that covers it.
OTHER_FIELDS = {
    "vocab_size",
    "num_layers",
    "model_dim",
    "num_heads",
    "num_kv_heads",  # test_param_counts, TINY
    "tied_embed_init_std",
    "attention.gate.init_std",
    "ortho_init",  # test_*_init_* below
    "residual.parallel.kind",
    "embeddings.smear.kind",
    "attention.gate.kind",  # gptj, smear_v1, ...
    "residual.loops.enable_frac",  # a training schedule knob: the model never reads it
    "attn_backend",  # test_attention_backend
    "logit_softcap_asym",  # test_asym_logit: its scalars are trained by TTT only, so no gradient here
}


def model_leaf_keys() -> set[str]:
    return {key.removeprefix("model.") for key, *_ in describe_schema() if key.startswith("model.")}


def test_flag_cases_cover_every_model_config_field():
    """Every ModelConfig leaf key is exercised by a case or named with the test that covers it."""
    covered = {key for case in FLAG_CASES.values() for key in case}
    covered |= {knob for _, knob, _, _ in DEPENDENT_CASES.values()} | OTHER_FIELDS
    assert model_leaf_keys() - covered == set()
    assert covered - model_leaf_keys() == set()  # no stale names


@pytest.fixture(scope="module")
def baseline_logits():
    with torch.no_grad():
        return tiny_model()(tokens()), count_parameters(tiny_model())


def with_bos(ids: torch.Tensor) -> torch.Tensor:
    ids = ids.clone()
    ids[:, 5] = 1  # a BOS inside the sequence exercises the smear BOS fix
    return ids


@pytest.mark.parametrize("overrides", FLAG_CASES.values(), ids=list(FLAG_CASES))
def test_flag_trains_and_changes_the_model(overrides, baseline_logits):
    """Finite loss, a non-zero finite gradient for every parameter, logits or count differ from baseline."""
    ids = with_bos(tokens())
    model = tiny_model(loops_on=True, **overrides)
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


@pytest.mark.parametrize("case", DEPENDENT_CASES.values(), ids=list(DEPENDENT_CASES))
def test_dependent_knob_changes_the_output(case):
    """Under its enabling flag, two values of the knob give two different models (logits or count)."""
    enable, knob, a, b = case
    ids = with_bos(tokens())
    with torch.no_grad():
        model_a = tiny_model(loops_on=True, **{**enable, knob: a})
        model_b = tiny_model(loops_on=True, **{**enable, knob: b})
        if count_parameters(model_a) != count_parameters(model_b):
            return
        assert (model_a(ids) - model_b(ids)).abs().max() > 1e-4, f"{knob}: {a!r} and {b!r} give one model"


def test_leaky_slope_is_the_negative_slope_of_the_squared_activation():
    """MLP(x) = W_down (max(h, 0) + slope min(h, 0))^2 with h = W_up x, for two slopes."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8)
    for slope in (0.5, 0.1):
        mlp = MLP(8, 2.0, "leaky_relu2", slope)
        torch.nn.init.normal_(mlp.down.weight)
        h = x @ mlp.up.weight.T
        expected = (torch.where(h > 0, h, slope * h) ** 2) @ mlp.down.weight.T
        torch.testing.assert_close(mlp(x), expected)


def test_sparse_gate_width_and_scale_follow_the_formula():
    """sparse: g = sigmoid(c * W x[..., :width]) per head, W (heads x width)."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    for width, scale in ((4, 1.0), (12, 0.5)):
        gate = AttnOutputGate("sparse", 16, 4, width, scale, init_std=0.0)
        torch.nn.init.normal_(gate.proj.weight)
        assert gate.proj.weight.shape == (4, width)
        torch.testing.assert_close(gate(x), torch.sigmoid(scale * (x[..., :width] @ gate.proj.weight.T)))


def test_window_layers_and_parallel_start_pick_their_layers():
    """window.layers: the window only in those layers; parallel.start_layer: GPT-J from that layer on."""
    model = build_model(
        tiny_cfg(**{"attention.window.size": 4, "attention.window.layers": [0, 2]}), device="cpu"
    )
    assert [b.attn.window for b in model.blocks] == [4, 0, 4, 0]
    everywhere = build_model(tiny_cfg(**{"attention.window.size": 3}), device="cpu")
    assert [b.attn.window for b in everywhere.blocks] == [3, 3, 3, 3]
    for start in (1, 3):
        gptj = build_model(
            tiny_cfg(**{"residual.parallel.kind": "gptj", "residual.parallel.start_layer": start}),
            device="cpu",
        )
        assert [b.gptj for b in gptj.blocks] == [i >= start for i in range(4)]


def test_defaults_flags_off_is_the_baseline_model():
    """With every flag at its default the tiny model has exactly the baseline's parameter names."""
    names = {n for n, _ in build_model(tiny_cfg(), device="cpu").named_parameters()}
    per_block = {
        "attn.q.weight",
        "attn.k.weight",
        "attn.v.weight",
        "attn.proj.weight",
        "attn.q_gain",
        "mlp.up.weight",
        "mlp.down.weight",
        "resid_mix",
        "attn_scale",
        "mlp_scale",
    }
    expected = {"tok_emb.weight", "skip_weights"} | {f"blocks.{i}.{n}" for i in range(4) for n in per_block}
    assert names == expected


def test_zero_init_paths_receive_gradient_at_init():
    """At init (no perturbation), the zero-init bigram table and output projections get a gradient.

    (V-side parameters such as the value-embedding projection start moving one step later: their
    gradient flows through the attention out-projection, which is zero at init.)
    """
    torch.manual_seed(0)
    cfg = tiny_cfg(
        **{
            "embeddings.bigram.buckets": 32,
            "embeddings.bigram.dim": 16,
            "embeddings.value.dim": 16,
            "embeddings.value.layers": [3],
            "ortho_init": True,
        }
    )
    model = build_model(cfg, device="cpu")
    model(tokens(), tokens(seed=1)).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("bigram.table.weight", "blocks.0.attn.proj.weight", "blocks.0.mlp.down.weight"):
        assert grads[name].abs().sum() > 0, name


def test_ortho_init_makes_large_matrices_orthogonal_and_keeps_zero_inits():
    """ortho_init: Q, MLP-up, bigram proj (dims >= 64) orthogonal; K (32 rows), out-proj, down untouched."""
    cfg = tiny_cfg(**{"ortho_init": True, "embeddings.bigram.buckets": 32, "embeddings.bigram.dim": 64})
    model = build_model(cfg, device="cpu")
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
    dense_cfg = tiny_cfg(model_dim=256, num_heads=8, attention={"gate": {"kind": "dense", "init_std": 0.05}})
    dense = build_model(dense_cfg, device="cpu")
    assert dense.blocks[0].attn.gate.proj.weight.shape == (8, 256)
    assert dense.blocks[0].attn.gate.proj.weight.std().item() == pytest.approx(0.05, rel=0.1)
    sparse = build_model(
        tiny_cfg(**{"attention.gate.kind": "sparse", "attention.gate.width": 12}), device="cpu"
    )
    assert sparse.blocks[0].attn.gate.proj.weight.shape == (4, 12)
    assert sparse.blocks[0].attn.gate.proj.weight.abs().sum() == 0
