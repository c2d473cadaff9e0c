"""Training throughput: ms per optimizer step and tokens/s of forward + backward + Muon/Adam step.

    .venv/bin/python bench/train_throughput.py             # CPU cases (+ GPU cases where CUDA exists)
    .venv/bin/python bench/train_throughput.py --steps 20

Random tokens (the data path is benchmarked by bench/data_throughput.py). On CPU: the smoke model and
the full challenge baseline with a small batch. On CUDA (bf16 autocast + torch.compile, as training):
the baseline and the #1493 record at full size with one rank's micro-batch of an 8xH100 run.
Copy the printed table into bench/README.md with the date and the machine.
"""

from __future__ import annotations

import argparse
import platform
import time
from contextlib import nullcontext

import torch

from pgolf_core.config import load_config
from pgolf_core.model import build_model, count_parameters
from pgolf_core.optim import build_optimizers

CPU_CASES = [  # (name, params file, overrides, batch tokens, seq len)
    ("smoke 4x128 (params/smoke/train.yaml)", "params/smoke/train.yaml", [], 8192, 256),
    ("baseline 9x512, small batch", "params/h100x8/baseline.yaml", [], 8192, 1024),
]
GPU_CASES = [  # one rank's micro-batch of an 8-GPU run
    ("baseline 9x512 (64 x 1024 tokens)", "params/h100x8/baseline.yaml", [], 65536, 1024),
    ("record #1493 11x512 loops on (48 x 2048 tokens)", "params/h100x8/record_1493.yaml", [], 98304, 2048),
]


def bench_case(
    params: str, overrides: list[str], batch_tokens: int, seq_len: int, steps: int, device: torch.device
):
    cfg = load_config(params, overrides)
    model = build_model(cfg.model, device=device).to(device)
    model.set_loops(True)  # a no-op without loops
    opt = build_optimizers(
        model, cfg.optim, tie_embeddings=cfg.model.tie_embeddings, fused=device.type == "cuda"
    )
    fwd = torch.compile(model, dynamic=False) if device.type == "cuda" else model
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    x = torch.randint(0, cfg.model.vocab_size, (batch_tokens // seq_len, seq_len), device=device)
    y = torch.randint(0, cfg.model.vocab_size, (batch_tokens // seq_len, seq_len), device=device)

    def step():
        with amp:
            loss = fwd(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # warmup (and compilation on CUDA)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    return count_parameters(model), model.attn_backend, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    cases = [(c, torch.device("cpu")) for c in CPU_CASES]
    if torch.cuda.is_available():
        cases += [(c, torch.device("cuda")) for c in GPU_CASES]
        print(f"gpu: {torch.cuda.get_device_name()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {platform.machine()}")
    print("| case | device | params | backend | tokens/step | ms/step | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for (name, params, overrides, batch, seq), device in cases:
        n, backend, dt = bench_case(params, overrides, batch, seq, args.steps, device)
        print(
            f"| {name} | {device.type} | {n:,} | {backend} | {batch:,} | {1000 * dt:,.1f} | "
            f"{batch / dt:,.0f} |"
        )


if __name__ == "__main__":
    main()
