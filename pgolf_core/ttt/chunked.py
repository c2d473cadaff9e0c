"""Chunked score-first test-time training over the sliding-window evaluation (#461, #549, #1413, #1493).

PR #461 defined it and the merged #549 adopted it: the stream is cut into chunks of
``chunk_tokens``; each sliding window belongs to the chunk holding the first target it scores. For
chunk c: (1) score all its windows under no_grad and commit their NLLs; (2) unless c is the last
chunk, train on chunk c's targets. Measured: #549 -0.0025 bpb (lr 0.002, 3 epochs, ~409 s on
8xH100); #1413 -0.0021 (lr 0.005); #1493 1.0827 -> 1.0810. #1019 dropped it as neutral on its stack.
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
    cosine_lr,
    freeze,
    select_parameters,
    start,
    train_on_targets,
)
from pgolf_core.ttt.lora import LoRASet
from pgolf_core.ttt.tilt import score_windows_tilted


def chunk_bounds(first_scored: np.ndarray, chunk_tokens: int, n_tokens: int) -> np.ndarray:
    """Window-id boundaries per chunk: chunk c owns windows [b[c], b[c+1]) (windows whose first scored
    target lies in [c * chunk_tokens, (c + 1) * chunk_tokens))."""
    n_chunks = (n_tokens - 1) // chunk_tokens + 1
    return np.searchsorted(first_scored // chunk_tokens, np.arange(n_chunks + 1), side="left")


def chunked_ttt(inputs: TTTInputs) -> EvalResult:
    """Score-first chunked TTT on a copy of ``model``; returns the sliding-window score of the stream.

    Invariant: no update uses a token before it is scored. Chunk c trains on the targets
    [c C, (c + 1) C); the windows of chunks 0..c score a contiguous prefix of targets that ends at or
    after (c + 1) C - 1, so all of them are committed first; the last chunk is never trained on.
    What adapts: ``ttt.adapt`` = "all" (minus ``freeze_first_blocks`` blocks; SGD/AdamW at ``lr``) or
    "lora" (adapters on ``lora_targets``, base frozen, at ``lora_lr``). LR per chunk:
    ``lr * (1 + cos(pi c / (C - 1))) / 2`` (cosine) or constant. With ``inputs.tilt`` the committed
    NLLs are tilted (``tilt.score_windows_tilted``); the training loss never is. All ranks must call
    this together.
    """
    w = start(inputs)
    ttt, spec, dist, events, capture = inputs.ttt, inputs.spec, inputs.dist, inputs.events, inputs.capture
    if ttt.adapt == "lora":
        freeze(w.model)
        lora = LoRASet(w.model, ttt.lora_targets, ttt.lora_rank, ttt.lora_alpha)
        params, base_lr, logits_fn = list(lora.parameters()), ttt.lora_lr, lora.logits
        loss_fn = lora.nll
        score_fn = resolve_nll(lambda x, y: logits_fn(x), spec.temperature)
    else:
        params, base_lr, logits_fn = (
            select_parameters(w.model, ttt.freeze_first_blocks),
            ttt.lr,
            w.model.logits,
        )
        loss_fn = w.model.nll
        score_fn = resolve_nll(w.model, spec.temperature)
    if capture is not None:
        capture.logits_fn = logits_fn
    opt = build_optimizer(
        params, ttt.optimizer, base_lr, momentum=ttt.momentum, weight_decay=ttt.weight_decay
    )

    plan = window_plan(w.n, spec.seq_len, spec.window_stride)
    bounds = chunk_bounds(plan.first_scored, ttt.chunk_tokens, w.n)
    n_chunks = len(bounds) - 1
    timer, steps, trained = Timer(), 0, 0
    for c in range(n_chunks):
        ids = np.arange(bounds[c], bounds[c + 1])
        ts = time.perf_counter()
        mine = ids[rank_slice(len(ids), dist)]
        common = dict(
            batch_seqs=spec.batch_seqs,
            sums=w.sums,
            target_bytes=w.target_bytes,
            device=w.device,
            autocast=spec.autocast,
            events=events,
            capture=capture,
        )
        if w.tilt is None:
            score_windows(score_fn, w.tokens_d, plan, mine, **common)
        else:  # the committed NLLs tilted, from logits (the training below is untouched)
            score_windows_tilted(
                logits_fn, w.tilt, w.tokens_d, plan, mine, temperature=spec.temperature, **common
            )
        timer.add("score_seconds", ts)
        if capture is not None and capture.done:
            break
        if c == n_chunks - 1 or ttt.epochs == 0:
            continue  # the last chunk is never trained on: nothing is left to score with it
        ts = time.perf_counter()
        span = TrainRange(max(1, c * ttt.chunk_tokens), min((c + 1) * ttt.chunk_tokens, w.n), spec.seq_len)
        steps += train_on_targets(
            loss_fn,
            params,
            opt,
            w.tokens_d,
            span,
            epochs=ttt.epochs,
            batch_seqs=ttt.batch_seqs,
            lr=cosine_lr(base_lr, c, n_chunks - 1, ttt.lr_schedule),
            grad_clip=ttt.grad_clip,
            dist=dist,
            device=w.device,
            autocast=spec.autocast,
            events=events,
            kind="ttt_step",
        )
        trained += 1
        timer.add("train_seconds", ts)
    info = {
        "mode": "chunk",
        "adapt": ttt.adapt,
        "chunks": n_chunks,
        "trained_chunks": trained,
        "steps": steps,
        "windows": plan.num_windows,
        "stride": plan.stride,
        **timer.seconds,
    }
    return w.finish(info)


class ChunkTTTScorer(TTTScorer):
    """Chunked score-first TTT as a ``Scorer``: ``scored`` for every window batch of a chunk precedes
    the ``updated("ttt_step")`` of each step on that chunk; the model passed in is never changed."""

    name = "ttt_chunk"

    variant = staticmethod(chunked_ttt)
