"""The per-group layout (#1855): role streams, L1 nearest-neighbour row chains, lrzip where installed."""

from __future__ import annotations

import shutil

import pytest
import torch

from pgolf_core.config import QuantConfig, QuantGroupConfig
from pgolf_core.quant import (
    ArtifactError,
    build_artifact,
    collect_hessians,
    dequantized_state,
    load_artifact,
    pergroup,
)
from pgolf_core.quant.compress import lrzip_status
from pgolf_core.quant.format import decode, encode
from pgolf_core.quant.pergroup import l1_chain, make_plan, restore_codes, stored_codes, tensor_roles
from pgolf_core.quant.quantize import quantize_state
from tests.model.helpers import tiny_model
from tests.quant.test_artifact import assert_bit_identical

HAVE_LRZIP = shutil.which("lrzip") is not None
INT6 = QuantConfig(
    scheme="groups",
    keep_float_max_numel=1024,
    attn=QuantGroupConfig(bits=6, clip="sdclip"),
    mlp=QuantGroupConfig(bits=6, clip="sdclip"),
    embed=QuantGroupConfig(bits=7, clip="sdclip", sdclip_k=15.0),
)


def no_lrzip(monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)


def chain_reference(q: torch.Tensor) -> list[int]:
    """Greedy nearest-neighbour chain, spelled out: from row 0, the closest unused row (L1), lowest
    index on ties."""
    rows = [[int(v) for v in r] for r in q]
    order, used = [0], {0}
    while len(order) < len(rows):
        cur = rows[order[-1]]
        best = min(
            (sum(abs(a - b) for a, b in zip(cur, rows[j], strict=True)), j)
            for j in range(len(rows))
            if j not in used
        )
        order.append(best[1])
        used.add(best[1])
    return order


def test_l1_chain_equals_the_spelled_out_greedy_chain_ties_included():
    """Small code ranges make many equal distances: the lowest index must win them, as in the reference."""
    g = torch.Generator().manual_seed(0)
    for rows, cols, hi in ((1, 4, 3), (2, 4, 3), (37, 5, 2), (90, 12, 31)):
        q = torch.randint(-hi, hi + 1, (rows, cols), generator=g, dtype=torch.int8)
        assert l1_chain(q).tolist() == chain_reference(q), (rows, cols)


def test_stored_codes_restore_rows_exactly():
    """q[perm] transposed, and back: every row where it was."""
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-127, 128, (50, 7), generator=g, dtype=torch.int8)
    perm = torch.randperm(50, generator=g)
    stored = stored_codes(q, perm)
    assert stored.shape == (7, 50) and torch.equal(stored[:, 0], q[perm[0]])
    assert torch.equal(restore_codes(stored, perm), q) and torch.equal(
        restore_codes(stored_codes(q, None), None), q
    )


def test_roles_follow_module_types():
    """q/k/v/proj of attention, up/down of the MLP, the tied embedding; nothing else has a role."""
    roles = tensor_roles(tiny_model())
    assert roles["tok_emb.weight"] == "tok_emb" and roles["blocks.2.attn.q.weight"] == "attn.q"
    assert roles["blocks.0.mlp.up.weight"] == "mlp.fc" and roles["blocks.3.mlp.down.weight"] == "mlp.proj"
    assert len(roles) == 1 + 4 * 6


@pytest.fixture(scope="module")
def rich():
    torch.set_num_threads(1)
    model = tiny_model(
        attention={"gate": {"kind": "dense"}},
        embeddings={"bigram": {"buckets": 700, "dim": 96}, "value": {"dim": 32, "layers": [2, 3]}},
    )
    g = torch.Generator().manual_seed(0)
    hess = collect_hessians(model, [(torch.randint(0, 64, (2, 32), generator=g), None) for _ in range(2)])
    cfg = QuantConfig(
        scheme="groups",
        keep_float_max_numel=1024,
        quant_gates=True,
        awq_top_k=2,
        awq_group_size=16,
        lqer_top_k=2,
        lqer_rank=2,
        lqer_group=16,
        attn=QuantGroupConfig(bits=6, clip="search", gptq=True),
        mlp=QuantGroupConfig(bits=5, clip="sdclip", sdclip_k=6.5, gptq=True),
        embed=QuantGroupConfig(bits=7, clip="sdclip", sdclip_k=15.0, gptq=True),
        compressor="pergroup",
    )
    return model, hess, cfg


@pytest.mark.parametrize("lrzip", ["installed", "missing"])
def test_pergroup_round_trip_is_bit_identical_with_and_without_lrzip(rich, lrzip, monkeypatch):
    """Every tensor family (gates, tables, AWQ-lite, LQER) through pergroup: bit-identical; the header
    records the lrzip that built it, or that there was none (all brotli then)."""
    if lrzip == "missing":
        no_lrzip(monkeypatch)
    elif not HAVE_LRZIP:
        pytest.skip("lrzip is not installed here")
    model, hess, cfg = rich
    art = build_artifact(model, cfg, hessians=hess)
    assert_bit_identical(load_artifact(art.blob), dequantized_state(model, cfg, hess))
    header, _ = decode(art.blob)
    codecs = {s["name"]: s["codec"] for s in header["sections"]}
    assert header["layout"] == "pergroup" and codecs["rest"] == "brotli"
    assert set(codecs) == {
        "tok_emb",
        "attn.k",
        "attn.q",
        "attn.v",
        "attn.proj",
        "mlp.fc",
        "mlp.proj",
        "tables",
        "rest",
    }
    if lrzip == "missing":
        assert art.compressor == "pergroup+brotli" and header["lrzip"] == "lrzip: not installed"
        assert set(codecs.values()) == {"brotli"}
    else:
        assert (
            art.compressor == "pergroup+lrzip" and header["lrzip"] == lrzip_status() != "lrzip: not installed"
        )
    xs = {t["n"]: t.get("x") for t in header["tensors"]}
    assert xs["tok_emb.weight"] == xs["blocks.1.attn.q.weight"] == xs["blocks.0.mlp.up.weight"] == "perm_t"
    assert xs["blocks.1.attn.k.weight"] == "t" and xs["blocks.0.attn.gate.proj.weight"] is None


@pytest.mark.skipif(not HAVE_LRZIP, reason="lrzip is not installed here")
def test_an_lrzip_artifact_without_lrzip_is_a_clear_error(monkeypatch):
    """Loading needs the codec that wrote it: the error says so (and how to get it)."""
    model = tiny_model(vocab_size=2048)  # a 2048 x 64 embedding: lrzip beats brotli on its stream
    art = build_artifact(model, INT6.model_copy(update={"compressor": "pergroup"}))
    assert any(s.get("codec") == "lrzip" for s in decode(art.blob)[0]["sections"])
    no_lrzip(monkeypatch)
    with pytest.raises(
        ArtifactError, match=r"section 0 \(tok_emb\): .*lrzip is not installed \(apt install lrzip\)"
    ):
        load_artifact(art.blob)


def test_a_stored_permutation_that_is_not_one_is_refused(monkeypatch):
    """A row order with a repeated row would silently duplicate rows: the loader refuses it."""
    no_lrzip(monkeypatch)
    model = tiny_model()
    qts, details = quantize_state(model, INT6)
    plan = make_plan(qts, details["roles"], "brotli")
    plan.perms["tok_emb.weight"] = torch.zeros(64, dtype=torch.int64)
    blob, _ = encode(qts, "brotli", "pergroup", "groups", plan=plan)
    with pytest.raises(ArtifactError, match="tok_emb.weight: perm is not a permutation of the rows"):
        load_artifact(blob)


def trained_like(seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights with the structure trained ones have: embedding rows and MLP input rows drawn around a
    few prototypes (similar tokens / neurons), in random order; low-rank plus noise attention
    matrices; per-row scales that vary."""
    model = tiny_model(vocab_size=512, mlp={"mult": 4.0})
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in model.state_dict().items():
        if t.ndim != 2 or t.numel() <= 1024:
            state[name] = t
            continue
        rows, cols = t.shape
        if name == "tok_emb.weight" or name.endswith("mlp.up.weight"):
            protos = torch.randn(16, cols, generator=g)
            w = protos[torch.randint(0, 16, (rows,), generator=g)] + 0.25 * torch.randn(
                rows, cols, generator=g
            )
        else:
            w = torch.randn(rows, 4, generator=g) @ torch.randn(4, cols, generator=g) + 0.5 * torch.randn(
                rows, cols, generator=g
            )
        state[name] = w * torch.exp(0.3 * torch.randn(rows, 1, generator=g)) / cols**0.5
    return state


def test_pergroup_is_smaller_than_brotli_on_trained_like_weights_and_the_chain_helps(monkeypatch):
    """pergroup (brotli streams, no lrzip) beats whole-blob brotli with and without byte shuffle; undoing
    the row chains costs bytes; with lrzip installed, pergroup+lrzip is smaller still (or equal)."""
    model = tiny_model(vocab_size=512, mlp={"mult": 4.0})
    state = trained_like()
    sizes = {}
    for comp, shuf in (("brotli", "off"), ("brotli", "on")):
        cfg = INT6.model_copy(update={"compressor": comp, "byte_shuffle": shuf})
        sizes[f"{comp}/{shuf}"] = build_artifact(state, cfg, model=model).model_bytes
    pg = INT6.model_copy(update={"compressor": "pergroup"})
    if HAVE_LRZIP:
        sizes["pergroup+lrzip"] = build_artifact(state, pg, model=model).model_bytes
    no_lrzip(monkeypatch)
    sizes["pergroup+brotli"] = build_artifact(state, pg, model=model).model_bytes
    monkeypatch.setattr(pergroup, "REORDERED", frozenset())
    sizes["no chain"] = build_artifact(state, pg, model=model).model_bytes
    assert sizes["pergroup+brotli"] < 0.97 * min(sizes["brotli/off"], sizes["brotli/on"]), sizes
    assert sizes["pergroup+brotli"] < 0.98 * sizes["no chain"], sizes
    if HAVE_LRZIP:
        assert sizes["pergroup+lrzip"] <= sizes["pergroup+brotli"], sizes
