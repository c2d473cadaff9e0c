"""NON-COMPLIANT ablation: fine-tune on the validation tokens, then score them (PR #1423 family).

This is the "pre-quant TTT" pattern of #1423 (6 epochs), #1416 (6), #1408 (10, "dTTT"), #1351 and
#1364: after training, N epochs of AdamW on ``val_tokens``, then (GPTQ and) sliding evaluation of the
same tokens. It is illegal (compliance.md R9: PR #1376 closed 2026-04-10; R6/R7/R8): every scored
token was trained on before it was scored. It exists only so the TTT-ablation notebook can show what
the cheat buys next to the legal variants. Every output says NON-COMPLIANT: the result's ``notes`` and
``compliant=False`` (its stage record gets a failed verdict), the scorer's name, every printed line.
Its Scorer reports ``updated`` on every position before any ``scored``, so compliance test T5 flags it.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from pgolf_core.config import TTTConfig
from pgolf_core.data.tokenizer_bytes import ByteLUTs
from pgolf_core.dist import DistInfo
from pgolf_core.eval import (
    Capture,
    EvalResult,
    ScoreSums,
    rank_slice,
    resolve_nll,
    score_windows,
    window_plan,
)
from pgolf_core.scoring import ScoreEvents
from pgolf_core.ttt.common import (
    EvalSpec,
    LogFn,
    Timer,
    TrainRange,
    TTTScorer,
    build_optimizer,
    select_parameters,
    start,
    train_on_targets,
)

NON_COMPLIANT = "NON-COMPLIANT"
REASON = (
    "NON-COMPLIANT ablation (compliance.md R9; PR #1376 ruling, the #1423/#1416/#1408 pattern): the model "
    "was fine-tuned on the validation tokens before they were scored; not a valid score"
)


def prequant_ablation(
    model: nn.Module,
    val_tokens: np.ndarray,
    luts: ByteLUTs | None,
    ttt: TTTConfig,
    spec: EvalSpec,
    *,
    dist: DistInfo,
    device: torch.device,
    return_streams: bool = False,
    events: ScoreEvents | None = None,
    capture: Capture | None = None,
    log: LogFn | None = None,
) -> EvalResult:
    """NON-COMPLIANT: ``prequant_epochs`` epochs of AdamW (``prequant_lr``) over every validation target,
    THEN sliding-window scoring of the same tokens, on a copy of ``model``. All ranks call it together.

    Deliberately breaks the invariant every legal variant keeps (no update uses a token before it is
    scored): ``events.updated`` fires for all targets before the first ``events.scored``.
    """
    t0, device, luts, work, tokens_d = start(model, val_tokens, luts, device)
    say = log if log is not None else (print if dist.is_main else (lambda _msg: None))
    say(f"{NON_COMPLIANT}: pre-quant TTT ablation, {ttt.prequant_epochs} epochs of AdamW on validation tokens before scoring them")
    params = select_parameters(work, 0)
    opt = build_optimizer(params, "adamw", ttt.prequant_lr, weight_decay=ttt.weight_decay)
    n = int(np.asarray(val_tokens).shape[0])
    timer, steps = Timer(), 0
    ts = time.perf_counter()
    span = TrainRange(1, n, spec.seq_len)
    for epoch in range(ttt.prequant_epochs):
        steps += train_on_targets(
            work.nll, params, opt, tokens_d, span, epochs=1, batch_seqs=ttt.batch_seqs, lr=ttt.prequant_lr,
            grad_clip=ttt.grad_clip, dist=dist, device=device, autocast=spec.autocast, events=events,
            kind="prequant_ttt",
        )
        say(f"{NON_COMPLIANT}: pre-quant TTT epoch {epoch + 1}/{ttt.prequant_epochs} trained on all {n - 1:,} validation targets")
    timer.add("train_seconds", ts)
    for p in params:
        p.requires_grad_(False)
    if capture is not None:
        capture.logits_fn = work.logits
    ts = time.perf_counter()
    plan = window_plan(n, spec.seq_len, spec.window_stride)
    sums = ScoreSums(n, device, return_streams)
    ids = np.arange(plan.num_windows)[rank_slice(plan.num_windows, dist)]
    score_windows(
        resolve_nll(work, spec.temperature), tokens_d, plan, ids, batch_seqs=spec.batch_seqs, sums=sums,
        luts=luts, device=device, autocast=spec.autocast, events=events, capture=capture,
    )
    timer.add("score_seconds", ts)
    info = {"mode": "prequant_ablation", "compliant": False, "epochs": ttt.prequant_epochs, "steps": steps, **timer.seconds}
    result = sums.finish(val_tokens, luts, dist, t0, info=info, notes=REASON, compliant=False)
    say(f"{NON_COMPLIANT}: pre-quant TTT ablation val_loss {result.loss:.6f} val_bpb {result.bpb:.6f} (not a valid score)")
    return result


class PrequantAblationScorer(TTTScorer):
    """The NON-COMPLIANT pre-quant TTT ablation as a ``Scorer`` (for the compliance checks to catch)."""

    name = "prequant_ttt_NON_COMPLIANT"

    def __init__(self, model: nn.Module, ttt: TTTConfig, spec: EvalSpec):
        super().__init__(model, spec)
        self.ttt = ttt

    def run(self, tokens, events, capture) -> EvalResult:
        spec = EvalSpec(self.spec.seq_len, self.spec.stride, self.spec.batch_seqs, self.spec.temperature, False)
        return prequant_ablation(
            self.model, tokens, None, self.ttt, spec, dist=DistInfo(), device=self.device,
            return_streams=True, events=events, capture=capture, log=lambda _msg: None,
        )
