"""NON-COMPLIANT ablation: fine-tune on the validation tokens, then score them (PR #1423 family).

This is the "pre-quant TTT" pattern of #1423 (6 epochs), #1416 (6), #1408 (10, "dTTT"), #1351 and
#1364: after training, N epochs of AdamW on ``val_tokens``, then (GPTQ and) sliding evaluation of the
same tokens. It is illegal (PR #1376, closed by the organizers on 2026-04-10; issues #402 and #677:
every token must be scored before any update that used it): every scored token was trained on before
it was scored. It exists only so the TTT-ablation notebook can show what
the cheat buys next to the legal variants. Every output says NON-COMPLIANT: the result's ``notes`` and
``compliant=False`` (its stage record gets a failed verdict), the scorer's name, every printed line.
Its Scorer reports ``updated`` on every position before any ``scored``, so compliance test T5 flags it.
"""

from __future__ import annotations

import time

import numpy as np

from pgolf_core.eval import (
    EvalResult,
    rank_slice,
    resolve_nll,
    score_windows,
    window_plan,
)
from pgolf_core.ttt.common import (
    Timer,
    TrainRange,
    TTTInputs,
    TTTScorer,
    build_optimizer,
    select_parameters,
    start,
    train_on_targets,
)

NON_COMPLIANT = "NON-COMPLIANT"
REASON = (
    "NON-COMPLIANT ablation (rule R9 of docs/compliance.md; PR #1376 ruling, the #1423/#1416/#1408 pattern): "
    "the model "
    "was fine-tuned on the validation tokens before they were scored; not a valid score"
)


def prequant_ablation(inputs: TTTInputs) -> EvalResult:
    """NON-COMPLIANT: ``prequant_epochs`` epochs of AdamW (``prequant_lr``) over every validation target,
    THEN sliding-window scoring of the same tokens, on a copy of ``inputs.model``. All ranks call it together.

    Deliberately breaks the invariant every legal variant keeps (no update uses a token before it is
    scored): ``events.updated`` fires for all targets before the first ``events.scored``.
    """
    w = start(inputs)
    ttt, spec, dist, events, capture = inputs.ttt, inputs.spec, inputs.dist, inputs.events, inputs.capture
    say = inputs.log if inputs.log is not None else (print if dist.is_main else (lambda _msg: None))
    say(
        f"{NON_COMPLIANT}: pre-quant TTT ablation, {ttt.prequant_epochs} epochs of AdamW on validation "
        "tokens before scoring them"
    )
    params = select_parameters(w.model, 0)
    opt = build_optimizer(params, "adamw", ttt.prequant_lr, weight_decay=ttt.weight_decay)
    n = w.n
    timer, steps = Timer(), 0
    ts = time.perf_counter()
    span = TrainRange(1, n, spec.seq_len)
    for epoch in range(ttt.prequant_epochs):
        steps += train_on_targets(
            w.model.nll,
            params,
            opt,
            w.tokens_d,
            span,
            epochs=1,
            batch_seqs=ttt.batch_seqs,
            lr=ttt.prequant_lr,
            grad_clip=ttt.grad_clip,
            dist=dist,
            device=w.device,
            autocast=spec.autocast,
            events=events,
            kind="prequant_ttt",
        )
        say(
            f"{NON_COMPLIANT}: pre-quant TTT epoch {epoch + 1}/{ttt.prequant_epochs} trained on all "
            f"{n - 1:,} validation targets"
        )
    timer.add("train_seconds", ts)
    for p in params:
        p.requires_grad_(False)
    if capture is not None:
        capture.logits_fn = w.model.logits
    ts = time.perf_counter()
    plan = window_plan(n, spec.seq_len, spec.window_stride)
    ids = np.arange(plan.num_windows)[rank_slice(plan.num_windows, dist)]
    score_windows(
        resolve_nll(w.model, spec.temperature),
        w.tokens_d,
        plan,
        ids,
        batch_seqs=spec.batch_seqs,
        sums=w.sums,
        target_bytes=w.target_bytes,
        device=w.device,
        autocast=spec.autocast,
        events=events,
        capture=capture,
    )
    timer.add("score_seconds", ts)
    info = {
        "mode": "prequant_ablation",
        "compliant": False,
        "epochs": ttt.prequant_epochs,
        "steps": steps,
        **timer.seconds,
    }
    result = w.finish(info, notes=REASON, compliant=False)
    say(
        f"{NON_COMPLIANT}: pre-quant TTT ablation val_loss {result.loss:.6f} val_bpb {result.bpb:.6f} "
        "(not a valid score)"
    )
    return result


class PrequantAblationScorer(TTTScorer):
    """The NON-COMPLIANT pre-quant TTT ablation as a ``Scorer`` (for the compliance checks to catch)."""

    name = "prequant_ttt_NON_COMPLIANT"

    variant = staticmethod(prequant_ablation)
