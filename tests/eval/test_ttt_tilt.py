"""The token-only tilt on the TTT's scored loss (stage q_ttt_tilt, #2135's score): with no confident hint
it is plain TTT bit for bit; it equals a slow reference (plain TTT's captured rows, hints from the
sequential builder, p' renormalized by hand); it helps on repetitive text; its scorer passes the
compliance checks, which catch a hint that reads the target; the stage record says where the hints
were built and how long that took."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from pgolf_core import compliance
from pgolf_core.config.eval_sections import TiltConfig
from pgolf_core.dist import DistInfo
from pgolf_core.eval.tilt import Hints, reference_hints, tilt_delta, tilted_nll
from pgolf_core.pipeline import STAGE_FNS, StageWeights, stage_q_ttt
from pgolf_core.pipeline.tilt_stage import TTT_HINTS_WHERE, stage_q_ttt_tilt
from pgolf_core.stages import STAGES
from pgolf_core.ttt import (
    ChunkTTTScorer,
    DocLoRAScorer,
    PhasedTTTScorer,
    TTTInputs,
    chunked_ttt,
    doc_lora_ttt,
    phased_ttt,
    run_ttt,
    ttt_scorer,
)
from pgolf_core.ttt.common import EvalSpec
from tests.eval.helpers import BOS, VOCAB, doc_stream, luts, random_stream, run_cfg, tiny_model, ttt_cfg
from tests.eval.test_tilt_stage import phrase_docs, session

CPU = torch.device("cpu")
SPEC = EvalSpec(seq_len=32, stride=8, batch_seqs=8, autocast=False)
LORA = {"lora_chunk_tokens": 16, "lora_window": 32, "lora_batch_docs": 3, "lora_lr": 0.05}
VARIANTS = {
    "chunk": (
        chunked_ttt,
        ChunkTTTScorer,
        {"mode": "chunk", "chunk_tokens": 128, "batch_seqs": 4, "lr": 0.05},
    ),
    "chunk_lora": (
        chunked_ttt,
        ChunkTTTScorer,
        {"mode": "chunk", "adapt": "lora", "chunk_tokens": 128, "epochs": 1, "batch_seqs": 4},
    ),
    "lora": (doc_lora_ttt, DocLoRAScorer, {"mode": "lora", **LORA}),
    "phased": (
        phased_ttt,
        PhasedTTTScorer,
        {
            "mode": "phased",
            **LORA,
            "phased_prefix_docs": 4,
            "phased_phases": 2,
            "phased_lr": 0.05,
            "chunk_tokens": 128,
            "batch_seqs": 4,
        },
    ),
}
LENGTHS = [150, 60, 200, 30, 180, 90, 7]


def noisy_docs(seed: int = 0, flip: float = 0.1) -> np.ndarray:
    """Documents repeating their own motif, with a fraction of the tokens replaced at random: hints
    fire often, and are sometimes wrong (the tilt then costs)."""
    rng = np.random.default_rng(seed)
    toks = doc_stream(LENGTHS, seed=seed).astype(np.int64)
    swap = (rng.random(toks.size) < flip) & (toks != BOS)
    toks[swap] = rng.integers(2, VOCAB, int(swap.sum()))
    return toks


def run(name: str, tokens: np.ndarray, tilt: TiltConfig | None, temperature: float = 1.0):
    variant, _, kw = VARIANTS[name]
    spec = replace(SPEC, temperature=temperature)
    inputs = TTTInputs(tiny_model(), tokens, luts(), ttt_cfg(**kw), spec, DistInfo(), CPU, True, tilt=tilt)
    return variant(inputs)


def knobs(**kw) -> TiltConfig:
    return TiltConfig(**{"enabled": True, "order": 6, **kw})


@pytest.mark.parametrize("name", list(VARIANTS))
def test_without_a_confident_hint_it_is_plain_ttt_bit_for_bit(name):
    """(a) A stream with no repeated 15-token context gives no hint: every number is plain TTT's."""
    tokens = random_stream(700, seed=2)
    plain, tilted = run(name, tokens, None), run(name, tokens, knobs(order=16, threshold=1.0))
    assert tilted.info["tilt"]["gated"] == 0 and tilted.info["tilt"]["targets"] == tokens.size - 1
    fields = ("loss", "bpb", "tokens", "bytes")
    assert [getattr(tilted, f) for f in fields] == [getattr(plain, f) for f in fields]
    np.testing.assert_array_equal(tilted.nll, plain.nll)
    np.testing.assert_array_equal(tilted.committed, plain.committed)


@pytest.mark.parametrize("name", ["chunk", "phased"])
def test_a_vanishing_beta_changes_nothing_but_rounding_and_the_updates_are_untilted(name):
    """(a) beta -> 0: the tilt term vanishes; and since the training loss is never tilted, every
    position the tilt does not touch scores exactly as in plain TTT, at any beta."""
    tokens = noisy_docs()
    plain, tiny = run(name, tokens, None), run(name, tokens, knobs(beta=1e-12))
    assert tiny.info["tilt"]["gated"] > 300
    assert tiny.loss == pytest.approx(plain.loss, rel=1e-10, abs=0)
    strong = run(name, tokens, knobs(beta=4.0))
    gated = reference_hints(tokens, 6, 0.8).gated
    untouched = ~gated
    untouched[0] = False
    np.testing.assert_array_equal(strong.nll[untouched], plain.nll[untouched])
    assert np.all(strong.nll[gated] != plain.nll[gated])


def slow_tilted_total(
    name: str, tokens: np.ndarray, tilt: TiltConfig, temperature: float
) -> tuple[float, int]:
    """The reference: plain TTT, every position's full row captured from the forward that scored it,
    hints from the sequential dictionary builder, p'(a) = p(a) e^{beta [a = h]} / sum by hand. Returns
    (total NLL, positions tilted)."""
    _, cls, kw = VARIANTS[name]
    spec = replace(SPEC, temperature=temperature)
    scorer = cls(tiny_model(), ttt_cfg(**kw), spec)
    plain = scorer.score_stream(tokens).nll
    positions = np.arange(1, tokens.size)
    rows = scorer.predictive(tokens, positions)
    hints: Hints = reference_hints(tokens, tilt.order, tilt.threshold)
    total, tilted = 0.0, 0
    for i, t in enumerate(positions):
        nll = plain[t]
        if hints.gated[t]:
            p = rows[i]
            w = p.copy()
            w[hints.hint[t]] *= math.exp(tilt.beta)
            w /= w.sum()
            nll += math.log(p[tokens[t]]) - math.log(w[tokens[t]])
            tilted += 1
        total += nll
    return total, tilted


@pytest.mark.parametrize(
    ("name", "temperature"), [("chunk", 1.0), ("chunk_lora", 0.9), ("lora", 1.0), ("phased", 0.9)]
)
def test_equals_a_slow_reference_from_captured_rows(name, temperature):
    """(b) Same total NLL as the hand-tilted plain TTT, to 1e-12 relative."""
    tokens = noisy_docs(seed=1)
    tilt = knobs(order=5, threshold=0.7, beta=2.625)
    want, tilted = slow_tilted_total(name, tokens, tilt, temperature)
    got = run(name, tokens, tilt, temperature)
    assert got.info["tilt"]["gated"] == tilted > 300
    hints = reference_hints(tokens, 5, 0.7)
    right = hints.gated & (hints.hint == tokens)
    assert right.sum() > 100 and (hints.gated & ~right).sum() > 30  # the hint is sometimes wrong
    assert got.loss * got.tokens == pytest.approx(want, rel=1e-12, abs=0)  # measured: 1e-15


@pytest.mark.parametrize("name", list(VARIANTS))
def test_on_repetitive_text_the_tilt_lowers_the_ttt_loss(name):
    """(c)"""
    tokens = noisy_docs(seed=2, flip=0.03)
    plain, tilted = run(name, tokens, None), run(name, tokens, knobs())
    assert tilted.loss < plain.loss - 0.05, (tilted.loss, plain.loss)
    assert tilted.bytes == plain.bytes and tilted.tokens == plain.tokens


def test_gated_rows_in_slices_give_the_same_numbers(monkeypatch):
    """The float64 log-softmax runs on slices of the gated rows (bounded memory); the slicing changes
    nothing."""
    tokens = noisy_docs(seed=3)
    whole = run("lora", tokens, knobs())
    monkeypatch.setattr("pgolf_core.ttt.tilt._ROWS", 5)
    sliced = run("lora", tokens, knobs())
    assert whole.info["tilt"]["gated"] > 200
    np.testing.assert_array_equal(sliced.nll, whole.nll)
    assert sliced.loss == whole.loss


def test_tilt_delta_is_the_term_tilted_nll_adds():
    rng = np.random.default_rng(0)
    nll, lp = rng.random(200) * 5, -rng.random(200) * 6
    hit, gated = rng.random(200) < 0.4, rng.random(200) < 0.7
    delta = tilt_delta(torch.from_numpy(lp).float(), torch.from_numpy(hit), 2.625).numpy()
    want = tilted_nll(nll, np.float32(lp).astype(np.float64), hit, gated) - nll
    np.testing.assert_allclose(np.where(gated, delta, 0.0), want, rtol=0, atol=1e-12)


PROBE = doc_stream([70, 30, 90, 12, 60], period=9)
SMALL_LORA = {"lora_chunk_tokens": 8, "lora_window": 16, "lora_batch_docs": 4, "lora_lr": 0.05}
SMALL_SPEC = EvalSpec(seq_len=16, stride=4, batch_seqs=16)
SCORERS = {
    "chunk": (ChunkTTTScorer, {"mode": "chunk", "chunk_tokens": 64, "epochs": 2, "lr": 0.1, "batch_seqs": 4}),
    "phased": (
        PhasedTTTScorer,
        {
            "mode": "phased",
            "phased_prefix_docs": 3,
            "phased_phases": 2,
            "phased_lr": 0.05,
            "chunk_tokens": 64,
            "batch_seqs": 4,
            **SMALL_LORA,
        },
    ),
}


def scorer_checks(name: str, **kw) -> dict:
    cls, ttt = SCORERS[name]
    tilt = knobs(order=4)
    make = lambda: cls(tiny_model(), ttt_cfg(**ttt), SMALL_SPEC, tilt)  # noqa: E731
    verdicts = compliance.run_scorer_checks(make, PROBE, uniform_tokens=600, n_cuts=6, **kw)
    return {v.check: v for v in verdicts}


@pytest.mark.parametrize("name", list(SCORERS))
def test_the_combined_scorer_passes_every_scorer_check(name):
    """(d) T1, T1b, T1c, T2 (the tilted rows, consistent with the committed NLL), T3, T4, T5."""
    cls, ttt = SCORERS[name]
    s = cls(tiny_model(), ttt_cfg(**ttt), SMALL_SPEC, knobs(order=4))
    assert s.name == f"{cls.name}_tilt"
    assert reference_hints(PROBE, 4, 0.8).gated.sum() > 100  # the probe does get tilted
    verdicts = scorer_checks(name)
    failed = {k: v.reason for k, v in verdicts.items() if v.passed is False}
    assert not failed
    assert verdicts["T2"].passed and verdicts["T1b"].passed and verdicts["T1"].passed


def test_the_checks_see_the_tilt(monkeypatch):
    """(d) A predictive that leaves out the tilt fails T2; a hint that reads the target fails T1b."""
    cls, ttt = SCORERS["chunk"]
    scorer = cls(tiny_model(), ttt_cfg(**ttt), SMALL_SPEC, knobs(order=4))
    untilted = cls(tiny_model(), ttt_cfg(**ttt), SMALL_SPEC)
    scorer.predictive = untilted.predictive
    t2 = compliance.check_normalization(scorer, PROBE)
    assert t2.passed is False and "not read from the checked distribution" in t2.reason

    def target_hints(tokens, order, threshold):  # the illegal channel: the hint is the target itself
        tokens = np.asarray(tokens, dtype=np.int64)
        return Hints(tokens.copy(), np.ones(tokens.size), np.ones(tokens.size, dtype=bool))

    monkeypatch.setattr("pgolf_core.ttt.tilt.build_hints", target_hints)
    verdicts = scorer_checks("chunk")
    assert verdicts["T1b"].passed is False
    assert verdicts["T3"].passed is False  # below chance on uniform tokens: it knows the answer


def stage_cfg():
    """Chunked TTT: the stage is the same for every mode, and the phased scorer's checks (the costly
    ones) run in test_the_combined_scorer_passes_every_scorer_check."""
    return run_cfg(
        eval={"stride": 8, "probe_tokens": 800, "probe_cuts": 4, "tilt": {"enabled": True, "order": 8}},
        ttt={"enabled": True, "mode": "chunk", "chunk_tokens": 256, "lr": 0.05, "batch_seqs": 4},
    )


def test_stage_record_states_where_the_hints_were_built_and_how_long_it_took():
    """(e) q_ttt_tilt beats q_ttt on repeated phrases, passes its checks, and its notes give the
    precompute (inside the TTT's timer: part of the stage's seconds) and the tilted share; q_ttt stays
    plain TTT with eval.tilt enabled."""
    val = phrase_docs(2001)
    ctx = session(stage_cfg(), val)
    weights = StageWeights(tiny_model(seed=4).state_dict())
    rec = stage_q_ttt_tilt(ctx, weights, "q_ttt_tilt")
    no_probe = stage_cfg().eval.model_copy(update={"probe_tokens": 0})
    plain = stage_q_ttt(session(stage_cfg().model_copy(update={"eval": no_probe}), val), weights, "q_ttt")
    assert rec.tokens == plain.tokens == val.size - 1 and rec.bytes == plain.bytes
    assert rec.val_bpb < plain.val_bpb - 0.1, (rec.val_bpb, plain.val_bpb)
    off = run_cfg(eval={"stride": 8, "probe_tokens": 0})
    off = session(stage_cfg().model_copy(update={"eval": off.eval}), val)
    assert stage_q_ttt(off, weights, "q_ttt").val_loss == plain.val_loss  # eval.tilt does not touch q_ttt
    verdicts = {v.check: v for v in rec.verdicts}
    for check in ("T1", "T1b", "T1c", "T2", "T3", "T4", "T5", "T4 full", "T6"):
        assert verdicts[check].passed is True, (check, verdicts[check].reason)
    assert rec.compliant
    assert rec.notes.startswith("hint precompute ") and f"({TTT_HINTS_WHERE})" in rec.notes
    assert rec.notes.endswith("; chunk TTT")
    hint_s = float(rec.notes.split()[2])
    assert 0 <= hint_s <= rec.seconds
    gated = int(rec.notes.split("; ")[1].split()[0].replace(",", ""))
    assert 500 < gated < val.size
    assert f"of {val.size - 1:,} targets tilted" in rec.notes


def test_q_ttt_tilt_is_registered_and_refuses_what_it_cannot_mean():
    assert STAGES[-1] == "q_ttt_tilt" and STAGE_FNS["q_ttt_tilt"] is stage_q_ttt_tilt
    val = phrase_docs(101)
    no_ttt = run_cfg(eval={"tilt": {"enabled": True}})
    no_tilt = run_cfg(ttt={"enabled": True})
    ablation = run_cfg(eval={"tilt": {"enabled": True}}, ttt={"enabled": True, "prequant_ablation": True})
    for cfg in (no_ttt, no_tilt, ablation):
        with pytest.raises(ValueError, match="stage 'q_ttt_tilt' needs ttt.enabled: true and eval.tilt"):
            stage_q_ttt_tilt(session(cfg, val), StageWeights({}), "q_ttt_tilt")
    with pytest.raises(ValueError, match="the tilt without TTT is stage q_tilt"):
        ttt_scorer(tiny_model(), no_ttt, tilt=True)
    inputs = TTTInputs.from_config(
        tiny_model(), val, luts(), ablation, dist=DistInfo(), device=CPU, tilt=True
    )
    with pytest.raises(ValueError, match="prequant_ablation True"):
        run_ttt(inputs)
