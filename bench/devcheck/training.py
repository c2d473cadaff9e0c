"""Sections ``train_compile`` and ``artifact``: a short training under torch.compile + bf16 against eager
fp32, and the artifact round trip of that GPU-trained model, loaded on the CPU.

The small model is the smoke config's (4 x 128, vocab 1024), trained on a synthetic Markov stream (four
likely successors per token, 1.1 nats of entropy) so that 50 steps have a falling loss to compare.
The same batches and the same initial weights go into both runs.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from bench.devcheck import models
from bench.devcheck.compare import at_least, max_abs_err, within
from bench.devcheck.models import (
    SMALL_PARAMS,
    autocast,
    build,
    load,
    markov_batches,
    optimizers,
    sync,
    vocab_size,
)
from bench.devcheck.runner import Check, Context
from pgolf_core.config import RunConfig
from pgolf_core.optim import muon_momentum_at
from pgolf_core.quant import build_artifact, load_artifact

STEPS, BATCH, SEQ = 50, 16, 256  # 4,096 tokens per step
LAST = 10  # the loss comparison averages the last LAST steps
LOSS_TOL = 0.05  # nats: mean |compiled bf16 - eager fp32| over the last steps
MIN_DROP = 2.0  # nats: both runs must learn (first 5 steps minus last 5; 4.3 in a CPU run of this setup)
STATE_FILE = "train_compile_state.pt"  # the compiled bf16 run's weights, for the artifact section
DEVICE_TOL = 1e-3  # the dequantized model's logits on the GPU vs on the CPU, both fp32 (max |diff|)
GAP_TOL = 0.05  # nats: |loss of the artifact on the CPU - loss of the trained weights on the GPU|


def train_losses(cfg: RunConfig, batches, device: torch.device, *, compile: bool, bf16: bool, seed: int = 0):
    """(per-step losses, trained model, seconds) of a constant-LR run over ``batches`` (Muon momentum
    warmup as configured); the same ``seed`` gives the same initial weights."""
    model = build(cfg, device, seed)
    opt = optimizers(model, cfg, device)
    fwd = torch.compile(model, dynamic=False) if compile else model
    losses = []
    sync(device)
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.set_lr_multiplier(1.0)
        opt.set_muon_momentum(muon_momentum_at(step, cfg.optim))
        with autocast(device, bf16):
            loss = fwd(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    sync(device)
    return [float(v) for v in losses], model, time.perf_counter() - t0


def compare_losses(
    test: list[float],
    ref: list[float],
    last: int = LAST,
    tol: float = LOSS_TOL,
    min_drop: float = MIN_DROP,
    label: str = "compiled bf16",
) -> list[Check]:
    """Both runs learned (their loss fell by ``min_drop``), and ``test`` ends within ``tol`` of ``ref``."""
    diff = statistics.fmean(abs(a - b) for a, b in zip(test[-last:], ref[-last:]))

    def drop(v: list[float]) -> float:
        return statistics.fmean(v[:5]) - statistics.fmean(v[-5:])

    return [
        within(
            f"loss: mean |{label} - eager fp32| over the last {last} steps",
            diff,
            tol,
            f"final {test[-1]:.4f} vs {ref[-1]:.4f}",
        ),
        at_least("eager fp32 loss fell (first 5 - last 5 steps)", drop(ref), min_drop, "nats"),
        at_least(f"{label} loss fell (first 5 - last 5 steps)", drop(test), min_drop, "nats"),
    ]


def loss_table_rows(runs: dict[str, list[float]], every: int = 10) -> list[list]:
    steps = sorted({1, *range(every, len(next(iter(runs.values()))) + 1, every)})
    return [[s, *(v[s - 1] for v in runs.values())] for s in steps]


def section_train(ctx: Context) -> None:
    device = models.device()
    (ctx.out_dir / STATE_FILE).unlink(missing_ok=True)  # never an earlier run's weights for the artifact
    cfg = load(SMALL_PARAMS)
    vocab = vocab_size(build(cfg, torch.device("cpu")))
    batches = markov_batches(vocab, STEPS, BATCH, SEQ, seed=0)
    ref = ctx.step("eager fp32 run", train_losses, cfg, batches, device, compile=False, bf16=False)
    test = ctx.step("compiled bf16 run", train_losses, cfg, batches, device, compile=True, bf16=True)
    if ref is None or test is None:
        return
    (ref_l, _, ref_s), (test_l, model, test_s) = ref, test
    t = ctx.table(
        f"training loss, {STEPS} steps of {BATCH} x {SEQ} tokens ({SMALL_PARAMS} model)",
        ["step", "eager fp32", "compiled bf16"],
    )
    for row in loss_table_rows({"eager": ref_l, "compiled": test_l}):
        ctx.row(t, row)
    for c in compare_losses(test_l, ref_l, last=LAST, tol=LOSS_TOL, min_drop=MIN_DROP):
        ctx.add(c)
    ctx.data("seconds", {"eager_fp32": round(ref_s, 2), "compiled_bf16_with_compile": round(test_s, 2)})
    ctx.note(f"eager fp32 {ref_s:.1f} s; compiled bf16 {test_s:.1f} s including compilation")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, ctx.out_dir / STATE_FILE)


def artifact_roundtrip(
    cfg: RunConfig, state: dict, device: torch.device, out_dir: Path, batch
) -> tuple[list[Check], dict]:
    """build_artifact on the trained weights, artifact.bin written and read back with load_artifact on the
    CPU, loaded strictly into a CPU model; its logits compared with the same weights on ``device``, its loss
    with the trained weights' on ``device``."""
    cpu = torch.device("cpu")
    src = build(cfg, cpu)
    src.load_state_dict(state)
    art = build_artifact(src, cfg.quant)
    path = Path(out_dir) / "artifact.bin"
    path.write_bytes(art.blob)
    deq = load_artifact(path)
    on_cpu = build(cfg, cpu)
    on_cpu.load_state_dict(deq, strict=True)
    on_dev = build(cfg, device)
    on_dev.load_state_dict(deq, strict=True)
    trained = build(cfg, device)
    trained.load_state_dict(state, strict=True)
    x, y = batch
    with torch.no_grad():
        logits_cpu, loss_cpu = on_cpu(x), float(on_cpu(x, y))
        logits_dev = on_dev(x.to(device)).cpu()
        loss_trained = float(trained(x.to(device), y.to(device)))
    devices = sorted({t.device.type for t in deq.values()})
    checks = [
        Check("load_artifact returns CPU tensors", None, None, devices == ["cpu"], f"devices {devices}"),
        within(
            "same dequantized weights: max |logits GPU - logits CPU| (fp32)",
            max_abs_err(logits_dev, logits_cpu),
            DEVICE_TOL,
        ),
        within(
            "quantization gap: |loss artifact on CPU - loss trained on GPU| (nats)",
            abs(loss_cpu - loss_trained),
            GAP_TOL,
            f"{loss_cpu:.4f} vs {loss_trained:.4f}",
        ),
        Check(
            "artifact under the byte cap",
            float(art.total_bytes),
            float(art.cap),
            not art.over_cap,
            f"model {art.model_bytes:,} + code {art.code_bytes:,} bytes, {art.compressor}",
        ),
    ]
    info = {
        "model_bytes": art.model_bytes,
        "code_bytes": art.code_bytes,
        "compressor": art.compressor,
        "loss_cpu": loss_cpu,
        "loss_trained": loss_trained,
        "path": str(path),
    }
    return checks, info


def section_artifact(ctx: Context) -> None:
    device = models.device()
    cfg = load(SMALL_PARAMS)
    vocab = vocab_size(build(cfg, torch.device("cpu")))
    path = ctx.out_dir / STATE_FILE
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        ctx.note(f"weights: the compiled bf16 run of section train_compile ({path.name})")
    else:
        batches = markov_batches(vocab, 20, BATCH, SEQ, seed=0)
        _, model, _ = train_losses(cfg, batches, device, compile=False, bf16=True)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        ctx.note("weights: 20 eager bf16 steps on the GPU (train_compile left no weights)")
    batch = markov_batches(vocab, 1, BATCH, SEQ, seed=99)[0]  # held-out text of the same chain
    out = ctx.step("round trip", artifact_roundtrip, cfg, state, device, ctx.out_dir, batch)
    if out is None:
        return
    checks, info = out
    for c in checks:
        ctx.add(c)
    ctx.data("artifact", info)
