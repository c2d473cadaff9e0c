"""Phased TTT: per-document LoRA plus global SGD passes on the base model (#1610, #1626 ... #1855).

#1610 (one phase) -> #1626 (three phases) -> ... -> #1855 (the top record). Documents are scored with
per-document LoRA TTT (``doc_lora``) in stream order; at the phase boundaries
floor(prefix_docs * k / phases), k = 1..phases, every rank pauses and one global full-parameter SGD
pass trains the base model on exactly the documents scored so far (all of them, each pass), then
scoring resumes with the updated base. Measured: #1610 -0.0014 nats vs #1530; #1626 three phases
-0.00081 bpb vs one (six or more overfit); #1855 quantized plain -> phased TTT -0.0127 bpb.

Queue order: the records sort the queue longest-first (GPU load balance), so which documents precede a
global pass depends on document lengths, i.e. on later tokens, and a future-perturbation test (T1)
would see early scores move. Here the queue is the stream's document order; only the order within a
phase (where the base is fixed and documents are independent) is length-sorted, which changes nothing.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from pgolf_core.config import TTTConfig
from pgolf_core.dist import DistInfo
from pgolf_core.eval import EvalResult
from pgolf_core.scoring import ScoreEvents
from pgolf_core.ttt.common import (
    EvalSpec,
    Timer,
    TrainRange,
    TTTInputs,
    TTTScorer,
    build_optimizer,
    cosine_lr,
    freeze,
    select_parameters,
    train_on_targets,
)
from pgolf_core.ttt.doc_lora import DocLoRARunner, finish_documents, split_docs_for_ranks, start_documents


def phase_boundaries(prefix_docs: int, phases: int, num_docs: int) -> list[int]:
    """Document counts after which a global pass runs: floor(P k / N), k = 1..N, kept only while
    documents remain to benefit (a pass after the last document would train for nothing)."""
    bounds = sorted({prefix_docs * k // phases for k in range(1, phases + 1)})
    return [b for b in bounds if 0 < b < num_docs]


def global_pass(
    model: nn.Module,
    runner: DocLoRARunner,
    tokens_d: torch.Tensor,
    first: int,
    end: int,
    ttt: TTTConfig,
    spec: EvalSpec,
    *,
    dist: DistInfo,
    device: torch.device,
    events: ScoreEvents | None,
) -> tuple[int, int]:
    """One SGD epoch on the base model over targets [first, end): chunks of ``chunk_tokens`` in
    sequences of ``context_len`` (0: the eval seq len), LR ``phased_lr`` cosine-decayed over the chunks,
    momentum, clip; LoRA off. Returns (chunks, steps).

    The only optimizer that trains the AsymLogit scalars (#1923: they are in the base model's
    parameters, which the per-document LoRA optimizers never see)."""
    runner.lora.enabled = False
    params = select_parameters(model, ttt.freeze_first_blocks, softcap_scalars=True)
    opt = build_optimizer(params, "sgd", ttt.phased_lr, momentum=ttt.momentum)
    n_chunks = -(-(end - first) // ttt.chunk_tokens)
    steps = 0
    for c in range(n_chunks):
        lo = first + c * ttt.chunk_tokens
        span = TrainRange(lo, min(lo + ttt.chunk_tokens, end), ttt.context_len or spec.seq_len)
        steps += train_on_targets(
            model.nll,
            params,
            opt,
            tokens_d,
            span,
            epochs=1,
            batch_seqs=ttt.batch_seqs,
            lr=cosine_lr(ttt.phased_lr, c, n_chunks, ttt.lr_schedule),
            grad_clip=ttt.grad_clip,
            dist=dist,
            device=device,
            autocast=spec.autocast,
            events=events,
            kind="global_sgd",
        )
    freeze(model)
    runner.lora.enabled = True
    return n_chunks, steps


def phased_ttt(inputs: TTTInputs) -> EvalResult:
    """Phased TTT on a copy of ``inputs.model``. All ranks call it together.

    Invariant: no update uses a token before it is scored. LoRA steps as in ``doc_lora``; a global
    pass at boundary b trains on the targets of documents 0..b-1, all of which every rank has finished
    scoring (the pass itself is the synchronization point), and on nothing else.
    """
    w, docs, runner = start_documents(inputs)
    ttt, dist, events, capture = inputs.ttt, inputs.dist, inputs.events, inputs.capture
    bounds = phase_boundaries(ttt.phased_prefix_docs, ttt.phased_phases, len(docs))
    timer, passes = Timer(), []
    done = 0
    for stop in [*bounds, len(docs)]:
        ts = time.perf_counter()
        runner.score(
            docs, split_docs_for_ranks(docs, np.arange(done, stop), dist), w.sums, w.luts, events, capture
        )
        timer.add("score_seconds", ts)
        done = stop
        if (capture is not None and capture.done) or stop == len(docs):
            break
        ts = time.perf_counter()
        chunks, steps = global_pass(
            w.model,
            runner,
            w.tokens_d,
            int(docs.starts[0]) + 1,
            int(docs.ends[stop - 1]) + 1,
            ttt,
            inputs.spec,
            dist=dist,
            device=w.device,
            events=events,
        )
        timer.add("global_seconds", ts)
        passes.append({"docs": stop, "chunks": chunks, "steps": steps, "seconds": time.perf_counter() - ts})
    info = {
        "mode": "phased",
        "docs": len(docs),
        "boundaries": bounds,
        "lora_steps": runner.steps,
        "global_steps": sum(p["steps"] for p in passes),
        "passes": passes,
        **timer.seconds,
    }
    return finish_documents(w, docs, runner, info)


class PhasedTTTScorer(TTTScorer):
    """Phased TTT as a ``Scorer``: LoRA steps report ``updated("lora_step")`` after their chunk's
    ``scored``; global passes report ``updated("global_sgd")`` only for already-scored documents."""

    name = "ttt_phased"

    variant = staticmethod(phased_ttt)
