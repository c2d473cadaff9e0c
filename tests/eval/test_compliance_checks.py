"""Every evaluation path here through the mechanical checks of pgolf_core.compliance (noise, T1..T5,
T1c): the legal ones pass all of them, the NON-COMPLIANT pre-quant ablation fails the ones that catch
training on validation tokens before scoring them (T1 future perturbation, T5 score-before-update)."""

from __future__ import annotations

import pytest

from pgolf_core import compliance
from pgolf_core.eval import SlidingScorer, StandardScorer
from pgolf_core.ttt import ChunkTTTScorer, DocLoRAScorer, PhasedTTTScorer, PrequantAblationScorer
from pgolf_core.ttt.common import EvalSpec
from tests.eval.helpers import doc_stream, tiny_model, ttt_cfg

SPEC = EvalSpec(seq_len=16, stride=4, batch_seqs=16)
LORA = {"lora_chunk_tokens": 8, "lora_window": 16, "lora_batch_docs": 4, "lora_lr": 0.05}
SCORERS = {
    "standard": lambda m: StandardScorer(m, seq_len=16),
    "sliding": lambda m: SlidingScorer(m, seq_len=16, stride=4, temperature=0.9),
    "chunk": lambda m: ChunkTTTScorer(
        m, ttt_cfg(mode="chunk", chunk_tokens=64, epochs=2, lr=0.1, batch_seqs=4), SPEC
    ),
    "chunk_lora": lambda m: ChunkTTTScorer(
        m, ttt_cfg(mode="chunk", adapt="lora", chunk_tokens=64, epochs=1, lora_lr=0.05, batch_seqs=4), SPEC
    ),
    "lora": lambda m: DocLoRAScorer(
        m, ttt_cfg(mode="lora", lora_targets=["q", "k", "v", "o", "mlp", "head"], **LORA), SPEC
    ),
    "phased": lambda m: PhasedTTTScorer(
        m,
        ttt_cfg(
            mode="phased",
            phased_prefix_docs=3,
            phased_phases=2,
            phased_lr=0.05,
            chunk_tokens=64,
            batch_seqs=4,
            **LORA,
        ),
        SPEC,
    ),
}


def checks(make, **kw):
    """Every scorer check with its default settings (16 cuts, 34 probed positions), given a factory."""
    tokens = doc_stream([70, 30, 90, 12, 60], period=9)
    return {v.check: v for v in compliance.run_scorer_checks(make, tokens, uniform_tokens=600, **kw)}


@pytest.mark.parametrize("name", list(SCORERS))
def test_legal_scorers_pass_every_scorer_check(name):
    verdicts = checks(lambda: SCORERS[name](tiny_model()))
    failed = {k: v.reason for k, v in verdicts.items() if v.passed is False}
    assert not failed
    assert verdicts["noise"].passed is True  # deterministic on CPU: no noise allowance was needed


def test_prequant_ablation_fails_future_perturbation_and_score_before_update():
    cfg = ttt_cfg(prequant_ablation=True, prequant_epochs=2, prequant_lr=0.01)
    verdicts = checks(lambda: PrequantAblationScorer(tiny_model(), cfg, SPEC), n_cuts=4, n_probe=8)
    assert verdicts["T1"].passed is False and verdicts["T5"].passed is False
    assert verdicts["T4"].passed is True  # it scores every position once: the defect is the order
