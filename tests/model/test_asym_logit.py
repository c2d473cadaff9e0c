"""AsymLogit rescale (#1923): identity at init, no gradient in training, trained by the phased-TTT global
pass only (never by per-document LoRA or the other TTT variants), kept by the artifact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgolf_core.config import OptimConfig, QuantConfig
from pgolf_core.dist import DistInfo
from pgolf_core.eval import ScoreSums, device_tokens
from pgolf_core.model import count_parameters
from pgolf_core.optim.groups import build_optimizers
from pgolf_core.quant.classify import classify
from pgolf_core.quant.quantize import dequantized_state
from pgolf_core.ttt.common import EvalSpec, TTTInputs, select_parameters, working_copy
from pgolf_core.ttt.doc_lora import DocLoRARunner, find_documents
from pgolf_core.ttt.lora import LoRASet
from pgolf_core.ttt.phased import global_pass, phased_ttt
from tests.eval.helpers import doc_stream, ttt_cfg
from tests.model.helpers import tiny_model, tokens

ASYM = {"logit_softcap_asym": True}
CPU = torch.device("cpu")


def asym_model(c: float = 30.0, pos: float | None = None, neg: float | None = None):
    model = tiny_model(**ASYM, logit_softcap=c)
    with torch.no_grad():  # perturb() moved the scalars; put them where the test wants them
        model.softcap_pos.fill_(c if pos is None else pos)
        model.softcap_neg.fill_(c if neg is None else neg)
    return model


def raw_logits(model, ids):
    """z before any cap, written out from the tied head."""
    return model.hidden(ids) @ model.tok_emb.weight.T


@pytest.mark.parametrize("c", [30.0, 15.7])
def test_at_init_eval_logits_equal_the_symmetric_softcap_exactly(c):
    """sp = sn = c: the eval path is bit-identical to the training path and to c * tanh(z / c)."""
    model, ids = asym_model(c), tokens()
    with torch.no_grad():
        z = raw_logits(model, ids)
        train_logits = model.train()(ids)
        eval_logits = model.eval()(ids)
    assert model.softcap_pos.item() == model.softcap_neg.item() == pytest.approx(c)
    assert torch.equal(eval_logits, train_logits)
    assert torch.equal(eval_logits, c * torch.tanh(z / c))


def test_eval_path_uses_each_sign_its_own_scale_and_training_keeps_the_single_cap():
    model, ids = asym_model(30.0, pos=20.0, neg=40.0), tokens()
    with torch.no_grad():
        z = raw_logits(model, ids)
        expected = torch.where(z >= 0, 20 * torch.tanh(z / 20), 40 * torch.tanh(z / 40))
        torch.testing.assert_close(model.eval()(ids), expected)
        torch.testing.assert_close(model.train()(ids), 30 * torch.tanh(z / 30))
    assert (z > 0).any() and (z < 0).any()


def test_a_training_step_gives_the_scalars_no_gradient_and_no_optimizer():
    """The training path never reads them: no gradient even if asked for one; no optimizer group holds
    them, so a step leaves them at their init; count_parameters counts them (+2)."""
    model = asym_model().train()
    assert not model.softcap_pos.requires_grad and not model.softcap_neg.requires_grad
    opt = build_optimizers(model, OptimConfig(), tie_embeddings=True)
    grouped = {id(p) for _, g in opt.groups() for p in g["params"]}
    assert id(model.softcap_pos) not in grouped and id(model.softcap_neg) not in grouped
    model.softcap_pos.requires_grad_(True)  # even then: the training forward does not use it
    model(tokens(), tokens(seed=1)).backward()
    assert model.softcap_pos.grad is None and model.softcap_neg.grad is None
    assert model.blocks[0].attn.q.weight.grad is not None
    opt.step()
    assert model.softcap_pos.item() == model.softcap_neg.item() == 30.0
    assert count_parameters(model) == count_parameters(tiny_model()) + 2


LENGTHS = [150, 60, 200, 30, 180]
TTT = {
    "mode": "phased",
    "lora_chunk_tokens": 16,
    "lora_window": 32,
    "lora_batch_docs": 3,
    "lora_lr": 0.05,
    "lora_targets": ["q", "v", "head"],
    "phased_lr": 0.05,
    "chunk_tokens": 128,
    "batch_seqs": 4,
}
SPEC = EvalSpec(seq_len=32, stride=8, batch_seqs=8, autocast=False)


def test_only_the_global_ttt_pass_trains_them():
    """Per-document LoRA scoring (head adapter included) leaves them alone; the global SGD pass moves
    each by its own gradient, so afterwards sp != sn; other TTT variants do not select them."""
    stream = doc_stream(LENGTHS)
    model = working_copy(asym_model(3.0))  # a small cap: z / c of order 1, so they get real gradients
    ttt, tokens_d = ttt_cfg(**TTT), device_tokens(stream, CPU)
    runner = DocLoRARunner(model, ttt, SPEC, tokens_d, CPU)
    docs = find_documents(stream)
    runner.score(docs, np.arange(2), ScoreSums(len(stream), CPU, False), None, None, None)
    assert model.softcap_pos.item() == model.softcap_neg.item() == 3.0 and runner.steps > 0
    global_pass(
        model, runner, tokens_d, 1, int(docs.ends[1]) + 1, ttt, SPEC, dist=DistInfo(), device=CPU, events=None
    )
    sp, sn = model.softcap_pos.item(), model.softcap_neg.item()
    assert abs(sp - 3.0) > 1e-4 and abs(sn - 3.0) > 1e-4 and abs(sp - sn) > 1e-4
    assert not model.softcap_pos.requires_grad  # frozen again after the pass
    chosen = {id(p) for p in select_parameters(model)}
    assert id(model.softcap_pos) not in chosen and id(model.softcap_neg) not in chosen
    assert id(model.softcap_pos) in {id(p) for p in select_parameters(model, softcap_scalars=True)}


def test_lora_head_logits_apply_the_asymmetric_map_after_the_adapter():
    """With a zero head adapter LoRASet.logits equals the model's eval logits, sp != sn included."""
    model = asym_model(30.0, pos=10.0, neg=50.0).eval()
    lora = LoRASet(model, ["head"], rank=2)
    ids = tokens()
    with torch.no_grad():
        torch.testing.assert_close(lora.logits(ids), model(ids), rtol=0, atol=0)
        symmetric = 30 * torch.tanh(raw_logits(model, ids) / 30)
        assert (lora.logits(ids) - symmetric).abs().max() > 1e-3


def test_artifact_keeps_both_scalars_as_small_float_control_tensors():
    """Routed as SCALAR-role "other" tensors: kept as floats, exact through quantize -> dequantize."""
    model = asym_model(30.0, pos=29.5, neg=31.25)
    classes = classify(model)
    for name in ("softcap_pos", "softcap_neg"):
        assert classes[name].group == "other" and classes[name].control
    for scheme in ("baseline_int8", "groups"):
        state = dequantized_state(model, QuantConfig(scheme=scheme))
        assert state["softcap_pos"].item() == 29.5 and state["softcap_neg"].item() == 31.25


def test_phased_ttt_scores_equal_before_the_first_global_pass_and_move_after():
    """The same weights with and without the scalars: phased TTT scores the documents before the first
    boundary identically (identity at init) and differently after it (the pass moved the scalars)."""
    stream = doc_stream([150, 60, 200, 30, 180, 90])
    plain, asym = tiny_model(logit_softcap=3.0).eval(), asym_model(3.0).eval()
    ttt = ttt_cfg(**TTT, phased_prefix_docs=5, phased_phases=2)
    runs = [
        phased_ttt(TTTInputs(m, stream, None, ttt, SPEC, dist=DistInfo(), device=CPU, return_streams=True))
        for m in (plain, asym)
    ]
    docs = find_documents(stream)
    before, after = slice(1, int(docs.ends[1]) + 1), slice(int(docs.starts[2]) + 1, None)
    np.testing.assert_array_equal(runs[0].nll[before], runs[1].nll[before])
    assert np.abs(runs[0].nll[after] - runs[1].nll[after]).max() > 1e-3
    assert asym.softcap_pos.item() == 3.0  # TTT worked on a copy
