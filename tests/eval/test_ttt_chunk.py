"""Chunked score-first TTT (#461, #549): order of scoring and updates, equivalences, effect."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from pgolf_core.config import config_from_dict
from pgolf_core.dist import DistInfo
from pgolf_core.evaluate import evaluate_sliding, window_plan
from pgolf_core.ttt import ChunkTTTScorer, TTTInputs, chunked_ttt
from pgolf_core.ttt.chunked import chunk_bounds
from pgolf_core.ttt.common import EvalSpec, build_optimizer, cosine_lr, select_parameters
from pgolf_core.ttt.lora import LoRASet
from tests.eval.helpers import OrderRecorder, luts, repetitive_stream, tiny_model, ttt_cfg

CPU = torch.device("cpu")
ONE = DistInfo()
SPEC = EvalSpec(seq_len=32, stride=8, batch_seqs=8)
CHUNK = 200


def run(tokens, events=None, model=None, **kw):
    cfg = ttt_cfg(**{"mode": "chunk", "chunk_tokens": CHUNK, "epochs": 2, "lr": 0.2, "batch_seqs": 4, **kw})
    return chunked_ttt(
        TTTInputs(
            model or tiny_model(),
            tokens,
            luts(),
            cfg,
            SPEC,
            dist=ONE,
            device=CPU,
            return_streams=True,
            events=events,
        )
    )


@pytest.mark.parametrize("kw", [{}, {"optimizer": "adamw", "lr": 0.003}, {"adapt": "lora", "lora_lr": 0.05}])
def test_every_update_uses_only_positions_already_scored(kw):
    """Hooks: each ttt_step's positions were all scored before it; nothing is scored twice; all targets
    scored."""
    tokens = repetitive_stream(1111, period=40)
    events = OrderRecorder(len(tokens))
    res = run(tokens, events, **kw)
    assert events.updates and not events.violations and not events.rescored
    assert events.is_scored[1:].all() and res.tokens == len(tokens) - 1
    assert {k for k, _ in events.updates} == {"ttt_step"}


def test_last_chunk_is_never_trained_on_and_each_chunk_trains_on_its_own_targets():
    tokens = repetitive_stream(1111, period=40)
    events = OrderRecorder(len(tokens))
    res = run(tokens, events)
    n_chunks = (len(tokens) - 1) // CHUNK + 1
    assert res.info["chunks"] == n_chunks and res.info["trained_chunks"] == n_chunks - 1
    np.testing.assert_array_equal(events.updated_positions(), np.arange(1, (n_chunks - 1) * CHUNK))
    # Chunk c's first update comes after the windows of chunks 0..c were scored, and stays inside chunk c.
    for kind, positions in events.updates:
        c = int(positions.min()) // CHUNK
        assert positions.max() < (c + 1) * CHUNK


def test_windows_belong_to_the_chunk_of_their_first_scored_target():
    plan = window_plan(1111, 32, 8)
    bounds = chunk_bounds(plan.first_scored, CHUNK, 1111)
    for c in range(len(bounds) - 1):
        firsts = plan.first_scored[bounds[c] : bounds[c + 1]]
        assert ((firsts >= c * CHUNK) & (firsts < (c + 1) * CHUNK)).all()
    assert bounds[0] == 0 and bounds[-1] == plan.num_windows


def test_zero_epochs_is_plain_sliding_evaluation():
    tokens = repetitive_stream(700, period=40)
    model = tiny_model()
    ttt = run(tokens, model=model, epochs=0)
    plain = evaluate_sliding(
        model, tokens, luts(), seq_len=32, stride=8, batch_seqs=8, dist=ONE, device=CPU, return_streams=True
    )
    np.testing.assert_array_equal(ttt.nll[1:], plain.nll[1:])
    assert (ttt.loss, ttt.bpb, ttt.tokens, ttt.bytes) == pytest.approx(
        (plain.loss, plain.bpb, plain.tokens, plain.bytes), abs=1e-12
    )
    assert ttt.info["steps"] == 0


def test_ttt_improves_later_chunks_of_a_repetitive_stream_and_leaves_the_model_alone():
    tokens = repetitive_stream(1111, period=40)
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ttt = run(tokens, model=model)
    plain = evaluate_sliding(
        model, tokens, luts(), seq_len=32, stride=8, batch_seqs=8, dist=ONE, device=CPU, return_streams=True
    )
    first = slice(1, CHUNK)
    np.testing.assert_allclose(ttt.nll[first], plain.nll[first], atol=1e-6)  # chunk 0: nothing trained yet
    late = slice(4 * CHUNK, None)
    assert np.nanmean(ttt.nll[late]) < np.nanmean(plain.nll[late]) - 1.0
    assert ttt.bpb < plain.bpb
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_blocks_and_lr_schedule():
    model = tiny_model()
    params = select_parameters(model, freeze_first_blocks=1)
    frozen = set(map(id, model.blocks[0].parameters()))
    assert frozen and not frozen & set(map(id, params))
    assert not any(p.requires_grad for p in model.blocks[0].parameters())
    assert [round(cosine_lr(1.0, c, 4), 6) for c in range(5)] == [1.0, 0.853553, 0.5, 0.146447, 0.0]
    assert cosine_lr(0.3, 3, 4, "constant") == 0.3


def test_helper_defaults_are_the_config_defaults():
    """The keyword defaults of the TTT helpers cannot drift from the config's defaults (the variants pass
    the config's values; a caller relying on a default gets the configured behaviour)."""
    cfg = config_from_dict({})

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    assert EvalSpec(seq_len=cfg.eval_seq_len) == EvalSpec.from_config(cfg)
    assert default(select_parameters, "freeze_first_blocks") == cfg.ttt.freeze_first_blocks
    assert default(cosine_lr, "schedule") == cfg.ttt.lr_schedule
    assert default(build_optimizer, "momentum") == cfg.ttt.momentum
    assert default(build_optimizer, "weight_decay") == cfg.ttt.weight_decay
    assert default(LoRASet, "alpha") == cfg.ttt.lora_alpha
    adamw = inspect.signature(torch.optim.AdamW).parameters  # no config field: torch's own AdamW defaults
    assert (default(build_optimizer, "betas"), default(build_optimizer, "eps")) == (
        adamw["betas"].default,
        adamw["eps"].default,
    )


def test_chunk_scorer_predictive_matches_scores_and_ignores_the_target():
    """predictive() reproduces the scored distribution under the adapted weights, and changing x[j]
    does not change the distribution at j (T1b)."""
    tokens = repetitive_stream(700, period=40)
    scorer = ChunkTTTScorer(
        tiny_model(), ttt_cfg(mode="chunk", chunk_tokens=CHUNK, epochs=1, lr=0.2, batch_seqs=4), SPEC
    )
    score = scorer.score_stream(tokens)
    positions = [5, 250, 480, 699]
    probs = scorer.predictive(tokens, positions)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(
        -np.log(probs[np.arange(4), tokens[positions]]), score.nll[positions], atol=1e-5
    )
    flipped = tokens.copy()
    flipped[480] = (tokens[480] + 7) % 62 + 2
    np.testing.assert_allclose(scorer.predictive(flipped, [480]), probs[2:3], atol=1e-9)
