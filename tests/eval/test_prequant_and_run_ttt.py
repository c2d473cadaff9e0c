"""The NON-COMPLIANT pre-quant ablation is caught and labelled; run_ttt dispatches on the config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pgolf_core.config import ConfigError, config_from_dict
from pgolf_core.dist import DistInfo
from pgolf_core.evaluate import SlidingScorer, StandardScorer, evaluate_sliding
from pgolf_core.ttt import (
    NON_COMPLIANT,
    ChunkTTTScorer,
    DocLoRAScorer,
    PhasedTTTScorer,
    PrequantAblationScorer,
    TTTInputs,
    prequant_ablation,
    run_ttt,
    ttt_scorer,
)
from pgolf_core.ttt.common import EvalSpec
from tests.eval.helpers import (
    OrderRecorder,
    doc_stream,
    luts,
    random_stream,
    repetitive_stream,
    run_cfg,
    tiny_model,
    ttt_cfg,
)

CPU = torch.device("cpu")
ONE = DistInfo()
SPEC = EvalSpec(seq_len=32, stride=8, batch_seqs=8)
PREQUANT = ttt_cfg(prequant_ablation=True, prequant_epochs=3, prequant_lr=0.01, batch_seqs=8)


def test_prequant_ablation_scores_better_and_says_non_compliant_everywhere(capsys):
    tokens = random_stream(600, seed=9)  # i.i.d. tokens: only training on them can beat the model
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cheat = prequant_ablation(TTTInputs(model, tokens, luts(), PREQUANT, SPEC, dist=ONE, device=CPU))
    plain = evaluate_sliding(model, tokens, luts(), seq_len=32, stride=8, batch_seqs=8, dist=ONE, device=CPU)
    assert cheat.bpb < plain.bpb - 0.3 and cheat.tokens == plain.tokens
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not cheat.compliant and NON_COMPLIANT in cheat.notes and "R9" in cheat.notes
    d = json.loads(json.dumps(cheat.as_dict()))
    assert d["compliant"] is False and NON_COMPLIANT in d["notes"]
    record = cheat.stage_record("prequant_ttt_ablation")
    assert not record.compliant and NON_COMPLIANT in record.notes
    assert [v.passed for v in record.verdicts] == [False] and NON_COMPLIANT in record.verdicts[0].reason
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == PREQUANT.prequant_epochs + 2 and all(NON_COMPLIANT in line for line in lines)


def test_prequant_scorer_updates_positions_before_scoring_them():
    """What compliance test T5 looks for: updates on positions not yet scored, and a name that says so."""
    tokens = random_stream(300, seed=2)
    scorer = PrequantAblationScorer(tiny_model(), PREQUANT, SPEC)
    assert NON_COMPLIANT.replace("-", "_") in scorer.name
    events = OrderRecorder(len(tokens))
    scorer.score_stream(tokens, events)
    assert events.violations and {k for k, _ in events.violations} == {"prequant_ttt"}
    np.testing.assert_array_equal(events.violations[0][1], np.arange(1, 1 + len(events.violations[0][1])))
    # ...and future tokens change early scores (T1 fails), unlike every legal variant.
    other = tokens.copy()
    other[150:] = random_stream(150, seed=3)
    assert np.abs(scorer.score_stream(other).nll[1:150] - scorer.score_stream(tokens).nll[1:150]).max() > 1e-4


@pytest.mark.parametrize(
    "ttt,mode,scorer_cls",
    [
        ({}, "off", SlidingScorer),
        (
            {"enabled": True, "mode": "chunk", "chunk_tokens": 128, "epochs": 1, "lr": 0.1, "batch_seqs": 4},
            "chunk",
            ChunkTTTScorer,
        ),
        (
            {
                "enabled": True,
                "mode": "lora",
                "lora_chunk_tokens": 16,
                "lora_window": 32,
                "lora_batch_docs": 4,
            },
            "lora",
            DocLoRAScorer,
        ),
        (
            {
                "enabled": True,
                "mode": "phased",
                "lora_chunk_tokens": 16,
                "lora_window": 32,
                "phased_prefix_docs": 2,
                "phased_phases": 1,
                "chunk_tokens": 128,
                "batch_seqs": 4,
            },
            "phased",
            PhasedTTTScorer,
        ),
        ({"prequant_ablation": True, "prequant_epochs": 1}, "prequant_ablation", PrequantAblationScorer),
    ],
)
def test_run_ttt_dispatches_on_the_config_and_matches_its_scorer(ttt, mode, scorer_cls):
    cfg = run_cfg(eval={"stride": 8, "seq_len": 32, "sliding_batch_seqs": 8}, ttt=ttt)
    tokens = doc_stream([60, 90, 40, 70])
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result, info = run_ttt(
        TTTInputs.from_config(model, tokens, luts(), cfg, dist=ONE, device=CPU, return_streams=True)
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # TTT adapts a copy
    assert info["mode"] == mode and result.info == info and result.tokens == len(tokens) - 1
    assert result.compliant == (mode != "prequant_ablation")
    json.dumps(result.as_dict())
    scorer = ttt_scorer(model, cfg)
    assert isinstance(scorer, scorer_cls)
    np.testing.assert_allclose(scorer.score_stream(tokens).nll[1:], result.nll[1:], atol=1e-6)


def test_ttt_off_without_stride_is_standard_evaluation():
    cfg = run_cfg(eval={"seq_len": 32})
    assert isinstance(ttt_scorer(tiny_model(), cfg), StandardScorer)
    tokens = repetitive_stream(300)
    result, info = run_ttt(TTTInputs.from_config(tiny_model(), tokens, luts(), cfg, dist=ONE, device=CPU))
    assert info == {"mode": "off", "stride": 32} and result.tokens == 299


def test_ttt_config_rejects_a_lora_window_smaller_than_its_chunk():
    with pytest.raises(ConfigError, match="lora_window"):
        config_from_dict({"ttt": {"lora_window": 64, "lora_chunk_tokens": 128}})


def test_the_pipeline_never_records_the_ablation_under_a_standard_stage_name():
    """The driver names q_ttt's record after the ablation; a stage call with a standard name is refused."""
    from types import SimpleNamespace

    from pgolf_core.pipeline import StageWeights, stage_name, stage_q_ttt

    cheat, legal = run_cfg(ttt={"prequant_ablation": True}), run_cfg(ttt={"enabled": True})
    assert (
        stage_name("q_ttt", cheat) == "q_ttt_prequant_NONCOMPLIANT" and stage_name("q_ttt", legal) == "q_ttt"
    )
    assert stage_name("q_sw", cheat) == "q_sw"
    with pytest.raises(ValueError, match="cannot be recorded as stage 'q_ttt'"):
        stage_q_ttt(SimpleNamespace(cfg=cheat), StageWeights({}), "q_ttt")
