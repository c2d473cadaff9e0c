"""Section ``records``: the record configs at full size, on one rank's micro-batch of an 8-GPU run.

Per config: (1) compiled vs eager, forward and backward: the loss and every parameter's gradient of the
compiled bf16 model against eager fp32, within twice what eager bf16 itself is off from fp32 (+ a floor);
(2) speed: ms per training step (forward + backward + Muon/AdamW step), tokens/s and peak memory,
against the records' logged 8xH100 figures; (3) what that means on one GPU: an optimizer step of the
8-GPU global batch by 8-way accumulation costs 8 forward+backward passes and one optimizer step.
Weights are randomized (``models.randomize_weights``): at init the zero output projections would leave
the blocks out of the comparison.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch._dynamo

from bench.devcheck import models
from bench.devcheck.compare import calibrated, grad_errors
from bench.devcheck.models import (
    RECORD_PARAMS,
    autocast,
    build,
    has_loops,
    load,
    micro_batch,
    optimizers,
    random_tokens,
    randomize_weights,
    sync,
    vocab_size,
)
from bench.devcheck.runner import Check, Context
from pgolf_core.challenge import TRAIN_SECONDS, WORLD_SIZE
from pgolf_core.model import count_parameters


@dataclass(frozen=True)
class Reference:
    ms_per_step: float | None  # 8xH100 SXM, one optimizer step of the global batch
    peak_mib: float | None  # peak memory allocated per GPU
    source: str


# From the records' train logs (records/track_10min_16mb/<folder>/train*.log).
REFERENCES = {
    "baseline": Reference(43.54, 10_184, "2026-03-17_NaiveBaseline: 13,780 steps in 600 s"),
    "record_1493": Reference(
        129.0,
        None,
        "#1493 (2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT): "
        "about 4,554 steps in 588 s, derived; no peak memory logged",
    ),
    "record_1855": Reference(
        121.7,
        41_717,
        "#1855 (2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611): "
        "4,931 steps, 3-seed mean; about 96 ms/step before the loops switch on",
    ),
    "record_2135": Reference(
        120.0,
        None,
        "#2135 (2026-05-01_SP8192_PR2130Base_Calib32): 4,983-5,001 steps at about 120 ms "
        "(frontier.md 10f); no peak memory in the notes",
    ),
}
# In order: a case that does not fit is skipped. #2135 is the frontier (varlen attention, AsymLogit).
CASES = ("baseline", "record_1855", "record_2135", "record_1493")
MEAN_DOC = 1000  # tokens per document in the varlen cases' batches (segments for the varlen kernel)
CASE_NEED_S = 40.0  # a case starts when this much of the section's budget is left
CHUNK_SEQS = 8  # the eager references run the micro-batch 8 sequences at a time (memory)
TIMED_STEPS = 8
FACTOR, LOSS_FLOOR, GRAD_FLOOR = 2.0, 1e-2, 1e-2


def _grads(model) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def eager_reference(model, x, y, bf16: bool, chunk: int = CHUNK_SEQS) -> tuple[float, dict]:
    """(mean loss, gradients) of the uncompiled model on the whole batch, ``chunk`` sequences at a time
    (equal chunks: the weighted chunk means are the batch mean)."""
    model.zero_grad(set_to_none=True)
    total, n = 0.0, x.size(0)
    for xc, yc in zip(x.split(chunk), y.split(chunk)):
        with autocast(x.device, bf16):
            loss = model(xc, yc)
        (loss * (xc.size(0) / n)).backward()
        total += float(loss.detach()) * xc.size(0) / n
    grads = _grads(model)
    model.zero_grad(set_to_none=True)
    return total, grads


def full_batch(fwd, model, x, y) -> tuple[float, dict, float]:
    """(loss, gradients, seconds) of ``fwd`` (compiled or not) in bf16 on the whole batch at once."""
    model.zero_grad(set_to_none=True)
    sync(x.device)
    t0 = time.perf_counter()
    with autocast(x.device, True):
        loss = fwd(x, y)
    loss.backward()
    sync(x.device)
    seconds = time.perf_counter() - t0
    grads = _grads(model)
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads, seconds


def compare_compiled(model, fwd, x, y, chunk: int = CHUNK_SEQS) -> tuple[list[Check], dict]:
    """Compiled bf16 (``fwd``) against eager fp32, with eager bf16's own error as the yardstick."""
    l32, g32 = eager_reference(model, x, y, bf16=False, chunk=chunk)
    l16, g16 = eager_reference(model, x, y, bf16=True, chunk=chunk)
    lc, gc, first_s = full_batch(fwd, model, x, y)
    e16, ec = grad_errors(g16, g32), grad_errors(gc, g32)
    ratio = {k: ec[k] / (FACTOR * e16[k] + GRAD_FLOOR) for k in g32}
    worst = max(ratio, key=lambda k: math.inf if math.isnan(ratio[k]) else ratio[k])
    checks = [
        calibrated(
            "loss: |compiled bf16 - eager fp32| (nats)",
            abs(lc - l32),
            abs(l16 - l32),
            FACTOR,
            LOSS_FLOOR,
            f"compiled {lc:.5f}, eager bf16 {l16:.5f}, eager fp32 {l32:.5f}",
        ),
        Check(
            "gradients: worst tensor's rel. L2 error / (2 x eager bf16's + 0.01)",
            ratio[worst],
            1.0,
            not math.isnan(ratio[worst]) and ratio[worst] <= 1.0 and set(gc) == set(g32),
            f"{worst}: compiled {ec[worst]:.2e}, eager bf16 {e16[worst]:.2e}; {len(g32)} tensors",
        ),
    ]
    return checks, {"loss_fp32": l32, "loss_bf16": l16, "loss_compiled": lc, "first_call_s": first_s}


def time_steps(fwd, model, opt, x, y, steps: int = TIMED_STEPS, clip: float = 0.0) -> dict:
    """ms per full training step (with the config's gradient clipping) and per forward+backward alone,
    tokens/s, peak memory (MiB)."""
    device = x.device

    def train_step() -> torch.Tensor:
        with autocast(device, True):
            loss = fwd(x, y)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    def fwd_bwd() -> torch.Tensor:
        with autocast(device, True):
            loss = fwd(x, y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(2):  # warm: the optimizer's first steps, allocator
        train_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out = {}
    for name, fn in (("step", train_step), ("fwd_bwd", fwd_bwd)):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = fn()
        sync(device)
        out[f"ms_{name}"] = 1000 * (time.perf_counter() - t0) / steps
    out["tokens_per_s"] = x.numel() / (out["ms_step"] / 1000)
    out["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    out["loss"] = float(loss)
    # One GPU, the 8-GPU global batch by accumulation: WORLD_SIZE forward+backward passes, one optimizer step.
    out["ms_step_1gpu"] = WORLD_SIZE * out["ms_fwd_bwd"] + max(out["ms_step"] - out["ms_fwd_bwd"], 0.0)
    return out


COLUMNS = [
    "case",
    "loops",
    "params",
    "backend",
    "micro-batch",
    "ms/step",
    "ms fwd+bwd",
    "tokens/s",
    "peak MiB",
    "record ms/step (8xH100)",
    "record peak MiB",
    "1-GPU ms/step (8 accum.)",
    "1-GPU steps in 600 s",
    "compile s",
]


def run_case(ctx: Context, name: str, table, reserve_s: float = 0.0) -> None:
    """One config: the comparison, then timings (loops on, then off if ``reserve_s`` is still left after)."""
    device = models.device()
    cfg = load(RECORD_PARAMS[name])
    model = build(cfg, device)
    randomize_weights(model, seed=1)
    looped = has_loops(model)
    model.set_loops(True)  # the expensive state; the records switch it on during training
    seqs, seq = micro_batch(cfg)
    varlen = cfg.model.attention.varlen.enabled
    x = random_tokens(vocab_size(model), (seqs, seq), 0, device, mean_doc=MEAN_DOC if varlen else 0)
    y = random_tokens(vocab_size(model), (seqs, seq), 1, device)
    fwd = torch.compile(model, dynamic=False)
    t0 = time.perf_counter()
    checks, info = compare_compiled(model, fwd, x, y)
    for c in checks:
        c.name = f"{name}: {c.name}"
        ctx.add(c)
    compile_s = info["first_call_s"]
    opt = optimizers(model, cfg, device)
    ref = REFERENCES[name]
    states = [True, False] if looped else [False]
    for loops in states:
        if looped and not loops:
            if ctx.left() < compile_s + 15 + reserve_s:
                ctx.note(
                    f"{name}: loops-off timing skipped ({ctx.left():.0f} s left, "
                    f"compiling took {compile_s:.0f} s)"
                )
                break
            model.set_loops(False)  # a guard on the flag: the next call compiles the plain plan
        m = time_steps(fwd, model, opt, x, y, clip=cfg.optim.grad_clip_norm)
        ctx.add(
            Check(
                f"{name}{' loops on' if loops else ''}: loss finite after {TIMED_STEPS + 2} steps",
                m["loss"],
                None,
                math.isfinite(m["loss"]),
            )
        )
        ctx.row(
            table,
            [
                name,
                ("on" if loops else "off") if looped else "-",
                count_parameters(model),
                model.attn_backend + (" varlen" if varlen else ""),
                f"{seqs} x {seq}",
                m["ms_step"],
                m["ms_fwd_bwd"],
                m["tokens_per_s"],
                m["peak_mib"],
                ref.ms_per_step,
                ref.peak_mib,
                m["ms_step_1gpu"],
                int(TRAIN_SECONDS * 1000 / m["ms_step_1gpu"]),
                compile_s,
            ],
        )
        ctx.data(f"{name}_loops_{'on' if loops else 'off'}", {**m, **info})
    ctx.note(f"{name}: {time.perf_counter() - t0:.0f} s; reference {ref.source}")


def section(ctx: Context) -> None:
    table = ctx.table(
        "training step at one rank's micro-batch of an 8-GPU run (compiled, bf16, no communication)",
        COLUMNS,
        note="The records' ms/step include DDP / banked-Muon communication and, for looped "
        "configs, the share of steps before the loops switch on; a loops-on row is the expensive state.",
    )
    for i, name in enumerate(CASES):
        later = CASE_NEED_S * (len(CASES) - 1 - i)  # the loops-off timing must leave the later cases room
        ctx.step(name, run_case, ctx, name, table, later, need_s=CASE_NEED_S)
        torch._dynamo.reset()  # a fresh cache per model (and no recompile limit across cases)
        torch.cuda.empty_cache()
