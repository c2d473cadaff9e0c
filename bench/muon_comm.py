"""Muon's communication per optimizer step and Newton-Schulz work per rank: DDP + Muon vs BankedMuon.

    .venv/bin/python bench/muon_comm.py                 # 8 ranks, the baseline, #1493 and #1855 configs
    .venv/bin/python bench/muon_comm.py --world 4 params/h100x8/record_549.yaml

Computed from the shapes (the model is built on the meta device; nothing runs), for the parameters that
pgolf_core.optim.groups routes to Muon. Bytes are what each rank sends per step under ring algorithms:
an all-reduce of B bytes sends 2 (n - 1) / n B, a reduce-scatter or an all-gather (n - 1) / n B.

- DDP + Muon (this repo's default, the baseline's structure): DDP all-reduces the gradients, then Muon
  all-reduces a buffer holding every matrix's update (zero outside each rank's own matrices).
- BankedMuon (PR #399, records #549+): reduce-scatter of the gradients, all-gather of the updates, both
  over banks padded to a multiple of the world size.

Each is shown with gradients / updates in fp32 / fp32, bf16 / bf16 (the records' banked code sends both
in bf16), and fp32 / bf16 (what Muon and BankedMuon send on GPU: gradients in their own dtype as DDP,
updates rounded to bf16). Copy the printed tables into bench/README.md.
"""

from __future__ import annotations

import argparse
import sys

import torch

from pgolf_core.challenge import WORLD_SIZE
from pgolf_core.config import load_config
from pgolf_core.model import build_model
from pgolf_core.optim.bank_plan import ns_flops, shard_plan
from pgolf_core.optim.groups import build_optimizers

CONFIGS = ["params/h100x8/baseline.yaml", "params/h100x8/record_1493.yaml", "params/h100x8/record_1855.yaml"]
DTYPES = [("fp32 / fp32", 4, 4), ("bf16 / bf16", 2, 2), ("fp32 / bf16", 4, 2)]


def muon_groups(path: str) -> tuple[list[list[torch.Size]], int]:
    """The shapes of each Muon param group of the config's model, and its Newton-Schulz steps."""
    cfg = load_config(path)
    with torch.device("meta"):
        model = build_model(cfg.model, device="cpu")
        opt = build_optimizers(model, cfg.optim, tie_embeddings=cfg.model.tie_embeddings)
    muon = opt.optimizers.get("muon")
    if muon is None:
        raise SystemExit(f"{path}: no parameter is routed to Muon")
    return [list(g["params"]) for g in muon.param_groups], cfg.optim.muon_backend_steps


def analyse(path: str, world: int) -> dict:
    groups, steps = muon_groups(path)
    elements = sum(p.numel() for g in groups for p in g)
    plans = shard_plan(groups, world, steps)
    padded = sum(b["padded"] * b["numel"] for b in plans)
    # Muon's round-robin: parameter i of a group on rank i % world (a 3-D bank is one parameter).
    rr = [0] * world
    for g in groups:
        for i, p in enumerate(g):
            rr[i % world] += ns_flops(p.shape[-2], p.shape[-1], steps) * (p.shape[0] if p.ndim == 3 else 1)
    banked = [sum(b["flops"][r] for b in plans) for r in range(world)]
    return {
        "name": path.rsplit("/", 1)[-1].removesuffix(".yaml"),
        "matrices": sum(b["matrices"] for b in plans),
        "elements": elements,
        "banks": " + ".join(f"{b['matrices']}->{b['padded']}" for b in plans),
        "padded": padded,
        "all_flops": sum(rr),
        "rr_flops": max(rr),
        "banked_flops": max(banked),
    }


def ring(world: int) -> float:
    return (world - 1) / world


def mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.1f}"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def tables(rows: list[dict], world: int) -> str:
    f = ring(world)
    out = [
        f"Muon parameters and virtual banks ({world} ranks; a bank holds matrices of equal element count):",
        "",
    ]
    out += md_table(
        ["config", "matrices", "elements", "banks (matrices -> padded)", "padded elements", "padding"],
        [
            [r["name"], str(r["matrices"]), f"{r['elements']:,}", r["banks"], f"{r['padded']:,}",
             f"+{r['padded'] / r['elements'] - 1:.1%}"]
            for r in rows
        ],
    )  # fmt: skip
    comm = []
    for r in rows:
        for label, gb, ub in DTYPES:
            ddp, upd = 2 * f * r["elements"] * gb, 2 * f * r["elements"] * ub
            rs, ag = f * r["padded"] * gb, f * r["padded"] * ub
            comm.append(
                [r["name"], label, mb(ddp), mb(upd), mb(ddp + upd), mb(rs), mb(ag), mb(rs + ag),
                 f"{(rs + ag) / (ddp + upd):.2f}", f"{(rs + ag) / ddp:.2f}"]
            )  # fmt: skip
    out += [
        "",
        f"MB (1e6 bytes) sent per rank per optimizer step for Muon's matrices ({world} ranks, ring):",
        "",
    ]
    out += md_table(
        ["config", "grads / updates", "DDP grad all-reduce", "Muon update all-reduce", "DDP + Muon",
         "banked reduce-scatter", "banked all-gather", "banked", "banked / (DDP + Muon)",
         "banked / DDP alone"],
        comm,
    )  # fmt: skip
    out += ["", f"Newton-Schulz GFLOPs per step on the busiest rank ({world} ranks):", ""]
    out += md_table(
        ["config", "every rank all matrices", "Muon round-robin", "banked shards", "banked vs all",
         "banked vs round-robin"],
        [
            [r["name"], f"{r['all_flops'] / 1e9:.1f}", f"{r['rr_flops'] / 1e9:.1f}",
             f"{r['banked_flops'] / 1e9:.1f}", f"{r['all_flops'] / r['banked_flops']:.1f}x less",
             f"{r['rr_flops'] / r['banked_flops']:.2f}x less"]
            for r in rows
        ],
    )  # fmt: skip
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "configs", nargs="*", default=CONFIGS, help="params files (default: baseline, #1493, #1855)"
    )
    ap.add_argument("--world", type=int, default=WORLD_SIZE, help=f"ranks (default {WORLD_SIZE})")
    args = ap.parse_args(argv)
    if args.world < 2:
        raise SystemExit(f"--world must be at least 2, got {args.world}")
    print(tables([analyse(p, args.world) for p in args.configs], args.world))
    return 0


if __name__ == "__main__":
    sys.exit(main())
