"""Legal score-first test-time training, plus one clearly labelled non-compliant ablation.

Score-first as PR #461 defined it: a token's loss is committed before any update that uses it (the
organizers' rulings in issues #402 and #677: adapting on already-scored tokens is legal; training on
validation tokens before scoring them, or reporting a later pass, is not).

    inputs = TTTInputs.from_config(model, val_tokens, target_bytes, cfg, dist=dist, device=device)
    result, info = run_ttt(inputs)         # target_bytes: eval.TargetBytes (or ByteLUTs)
    scorer = ttt_scorer(model, cfg)        # the same evaluation as a pgolf_core.scoring.Scorer

Variants (``cfg.ttt.mode``), one module each:
- ``chunk`` (chunked.py): score a chunk of sliding windows, then train on it (#461/#549/#1413/#1493);
- ``lora`` (doc_lora.py): per-document LoRA adapters, score a chunk then one step (LORA0, #1530);
- ``phased`` (phased.py): LoRA queue plus global SGD passes over already-scored documents
  (#1610/#1626..#1855);
- ``ttt.prequant_ablation`` (prequant.py): NON-COMPLIANT fine-tuning on validation tokens before
  scoring them (#1423 family), for the ablation notebook only.

Any legal variant can score with the token-only n-gram tilt on its committed loss (tilt.py; #2135's
score is phased TTT + the tilt): ``TTTInputs.from_config(..., tilt=True)``, ``ttt_scorer(model, cfg,
tilt=True)`` (stage q_ttt_tilt).

Every variant works on a deep copy (the caller's weights never change) and keeps the invariant that no
update uses a token before it is scored, except the ablation, which exists to violate it visibly.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from pgolf_core.config import RunConfig, TTTConfig
from pgolf_core.eval import EvalResult, SlidingScorer, StandardScorer, evaluate_sliding
from pgolf_core.scoring import Scorer
from pgolf_core.ttt.chunked import ChunkTTTScorer, chunked_ttt
from pgolf_core.ttt.common import EvalSpec, TTTInputs
from pgolf_core.ttt.doc_lora import DocLoRAScorer, doc_lora_ttt, find_documents
from pgolf_core.ttt.lora import LoRASet
from pgolf_core.ttt.phased import PhasedTTTScorer, phased_ttt
from pgolf_core.ttt.prequant import NON_COMPLIANT, PrequantAblationScorer, prequant_ablation

_VARIANTS = {"chunk": chunked_ttt, "lora": doc_lora_ttt, "phased": phased_ttt}
_SCORERS = {"chunk": ChunkTTTScorer, "lora": DocLoRAScorer, "phased": PhasedTTTScorer}


def run_ttt(inputs: TTTInputs) -> tuple[EvalResult, dict]:
    """Evaluate ``inputs.model`` on ``inputs.tokens`` with the TTT of ``inputs.ttt``; returns (result, info).

    ``ttt.prequant_ablation`` runs the NON-COMPLIANT ablation (result marked so); otherwise
    ``ttt.enabled`` picks ``ttt.mode``; with TTT off this is plain sliding-window evaluation (the
    ``q_sw`` number, stride ``eval.stride`` or non-overlapping), so an ablation grid can include it.
    Scoring windows follow ``inputs.spec`` (from ``cfg.eval``: seq_len, stride, sliding_batch_seqs,
    temperature). All ranks must call this together; the model is never modified. ``inputs.tilt``
    needs a legal TTT variant (``ttt.enabled``, not the ablation).
    """
    ttt, spec = inputs.ttt, inputs.spec
    if inputs.tilt is not None:
        _check_tilt(ttt)
    if ttt.prequant_ablation:
        result = prequant_ablation(inputs)
    elif ttt.enabled:
        result = _VARIANTS[ttt.mode](inputs)
    else:
        result = evaluate_sliding(
            inputs.model,
            inputs.tokens,
            inputs.target_bytes,
            seq_len=spec.seq_len,
            stride=spec.window_stride,
            batch_seqs=spec.batch_seqs,
            dist=inputs.dist,
            device=inputs.device,
            autocast=spec.autocast,
            temperature=spec.temperature,
            return_streams=inputs.return_streams,
        )
        result = replace(result, info={"mode": "off", "stride": spec.window_stride})
    return result, dict(result.info)


def _check_tilt(ttt: TTTConfig) -> None:
    if ttt.prequant_ablation or not ttt.enabled:
        raise ValueError(
            "the tilt on the TTT's scored loss needs ttt.enabled: true and ttt.prequant_ablation: false "
            f"(got enabled {ttt.enabled}, prequant_ablation {ttt.prequant_ablation}); the tilt without TTT "
            "is stage q_tilt"
        )


def ttt_scorer(model: nn.Module, cfg: RunConfig, *, tilt: bool = False) -> Scorer:
    """The evaluation ``run_ttt`` would do, as a single-process ``Scorer`` for the compliance checks;
    ``tilt``: with the tilt of ``cfg.eval.tilt`` on the scored loss."""
    spec = EvalSpec.from_config(cfg)
    if tilt:
        _check_tilt(cfg.ttt)
        return _SCORERS[cfg.ttt.mode](model, cfg.ttt, spec, cfg.eval.tilt)
    if cfg.ttt.prequant_ablation:
        return PrequantAblationScorer(model, cfg.ttt, spec)
    if cfg.ttt.enabled:
        return _SCORERS[cfg.ttt.mode](model, cfg.ttt, spec)
    if spec.window_stride == spec.seq_len:
        return StandardScorer(
            model, seq_len=spec.seq_len, batch_seqs=spec.batch_seqs, temperature=spec.temperature
        )
    return SlidingScorer(
        model,
        seq_len=spec.seq_len,
        stride=spec.window_stride,
        batch_seqs=spec.batch_seqs,
        temperature=spec.temperature,
    )


__all__ = [
    "NON_COMPLIANT",
    "ChunkTTTScorer",
    "DocLoRAScorer",
    "EvalSpec",
    "LoRASet",
    "PhasedTTTScorer",
    "PrequantAblationScorer",
    "TTTInputs",
    "chunked_ttt",
    "doc_lora_ttt",
    "find_documents",
    "phased_ttt",
    "prequant_ablation",
    "run_ttt",
    "ttt_scorer",
]
