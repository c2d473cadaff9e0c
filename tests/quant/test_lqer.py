"""LQER (#1797, on in #1851/#1855): a rank-r correction of the worst tensors, INT2 A / INT4-grouped B."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import pgolf_core.quant
from pgolf_core.config import QuantConfig, QuantGroupConfig
from pgolf_core.quant.lqer import lqer_correction
from pgolf_core.quant.quantize import quantize_state
from pgolf_core.quant.schemes import dequant_rows, dequantize
from tests.model.helpers import tiny_model

INT4 = QuantConfig(
    scheme="groups",
    keep_float_max_numel=1024,
    attn=QuantGroupConfig(bits=4),
    mlp=QuantGroupConfig(bits=4),
    embed=QuantGroupConfig(bits=4),
)


def test_lqer_corrects_the_top_k_tensors_by_error_norm():
    """The K tensors with the largest ||W - W^||_F get factors, and their error shrinks."""
    model = tiny_model(mlp={"mult": 4.0})
    state = model.state_dict()
    plain, _ = quantize_state(model, INT4)
    norms = {
        qt.name: float((state[qt.name] - dequant_rows(qt.arrays["q"], qt.arrays["scale"])).norm())
        for qt in plain
        if qt.kind == "row"
    }
    worst = sorted(norms, key=norms.get, reverse=True)[:3]
    qts, details = quantize_state(model, INT4.model_copy(update={"lqer_top_k": 3, "lqer_rank": 4}))
    assert details["lqer"] == worst
    for qt in qts:
        if qt.name in worst:
            after = float((state[qt.name] - dequantize(qt)).norm())
            # random (full-rank) error: rank 4 of 64-256 directions removes a few % of it
            assert after / norms[qt.name] == pytest.approx(0.955, abs=0.03)
        else:
            assert "lqer_a" not in qt.arrays


def test_lqer_packing_ranges_shapes_and_bytes():
    """A: codes in {-2..1}, one fp32 scale max|A|/1.5; B: codes in [-8, 7], one fp16 scale per 64 elements."""
    model = tiny_model(mlp={"mult": 4.0})
    qts, _ = quantize_state(
        model, INT4.model_copy(update={"lqer_top_k": 1, "lqer_rank": 4, "lqer_group": 64})
    )
    qt = next(q for q in qts if "lqer_a" in q.arrays)
    rows, cols = qt.shape
    a, b = qt.arrays["lqer_a"], qt.arrays["lqer_b"]
    assert a.shape == (rows, 4) and b.shape == (4, cols) and a.dtype == b.dtype == torch.int8
    assert int(a.min()) >= -2 and int(a.max()) <= 1 and int(b.min()) >= -8 and int(b.max()) <= 7
    assert qt.arrays["lqer_b_scale"].shape == (-(-4 * cols // 64),)
    extra = sum(qt.arrays[k].numel() * qt.arrays[k].element_size() for k in qt.arrays if k.startswith("lqer"))
    assert extra == 4 * (rows + cols) + 4 + 2 * (-(-4 * cols // 64))  # ~4 (rows + cols) int8 entries + scales
    assert lqer_correction(qt.arrays, qt.meta["lqer_group"]).shape == (rows, cols)


def test_quant_modules_import_one_way():
    """No import cycle among pgolf_core.quant's modules, and none dodged by an import inside a function:
    the module-level import graph is acyclic and every pgolf import sits at the top of its module."""
    root = Path(pgolf_core.quant.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        graph[path.stem] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pgolf_core"):
                assert id(node) in top, f"{path.name}:{node.lineno} imports {node.module} inside a block"
                if node.module.startswith("pgolf_core.quant."):
                    graph[path.stem].add(node.module.rsplit(".", 1)[1])
    assert graph["lqer"] == set()  # pure tensor math

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        nexts = graph.get(start, ())
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in nexts)

    assert [m for m in graph if reaches(m, m, set())] == []
