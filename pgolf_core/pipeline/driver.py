"""The pipeline's driver: run the requested stages in order, log and write stages.json after each.

    run_stages(cfg, train_dir, out_dir)                     # from a notebook or a test, one process
    python -m pgolf_core.pipeline TRAIN_DIR --out DIR       # the same from a shell (pipeline/__main__.py)
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as tdist

from pgolf_core.config import RunConfig, load_config
from pgolf_core.dist import DistInfo, dist_info_from_env
from pgolf_core.model import build_model
from pgolf_core.pipeline.session import Session
from pgolf_core.pipeline.stages import (
    quantize_weights,
    stage_q,
    stage_q_ngram,
    stage_q_sw,
    stage_q_ttt,
    stage_weights,
)
from pgolf_core.stages import STAGES, StageRecord, write_stages

DESCRIPTION = "The post-training stages of a run, each a StageRecord with its compliance verdicts."


@dataclass
class PipelineResult:
    records: list[StageRecord]
    train_seconds: float | None
    eval_seconds: float | None  # the last (submitted) stage's evaluation time
    artifact_bytes: int | None
    attn_backend: str
    artifact: dict = field(default_factory=dict)  # accounting and compressor of artifact.bin




def default_stages(cfg: RunConfig, have_ema: bool) -> list[str]:
    stages = ["pre"] + (["ema"] if have_ema else []) + ["q"]
    if cfg.eval.stride:
        stages.append("q_sw")
    if cfg.ttt.enabled or cfg.ttt.prequant_ablation:
        stages.append("q_ttt")
    if cfg.ngram.enabled:
        stages.append("q_ngram")
    return stages


def run_stages(
    cfg: RunConfig,
    train_dir: str | Path,
    out_dir: str | Path,
    *,
    stages: Sequence[str] | None = None,
    dist: DistInfo | None = None,
    log: Callable[[str], None] = print,
) -> PipelineResult:
    """Compute the requested stages (default: every stage the config enables) and write stages.json."""
    ctx = Session.open(cfg, train_dir, out_dir, dist)
    dist, device, train_dir, out_dir = ctx.dist, ctx.device, ctx.train_dir, ctx.out_dir
    ckpt = train_dir / "checkpoints"
    have_ema = (ckpt / "final_ema.pt").is_file()
    stages = list(stages or default_stages(cfg, have_ema))
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {STAGES}")
    raw = ctx.weights("raw")
    ema = ctx.weights("ema") if have_ema else None
    records: list[StageRecord] = []
    accounting: dict = {}

    def done(rec: StageRecord | None) -> None:
        if rec is None:
            return
        records.append(rec)
        failed = [v.check for v in rec.verdicts if v.passed is False]
        log(f"stage {rec.stage:<6} val_bpb {rec.val_bpb:.5f}  val_loss {rec.val_loss:.5f}  {rec.seconds:7.1f}s  "
            + ("compliant" if not failed else f"NON-COMPLIANT ({', '.join(failed)})"))
        if dist.is_main:
            write_stages(out_dir / "stages.json", records, train_dir=str(train_dir), artifact=accounting)

    if "pre" in stages:
        done(stage_weights(ctx, "pre", raw))
    if "ema" in stages:
        if ema is None:
            raise FileNotFoundError(f"{ckpt / 'final_ema.pt'}: stage 'ema' needs train.ema_decay > 0")
        done(stage_weights(ctx, "ema", ema))
    q_stages = [s for s in stages if s.startswith("q")]
    if q_stages:
        q_state, t7, t6q, accounting = quantize_weights(ctx, ema if ema is not None else raw)
        log(f"artifact: {accounting['total_bytes']:,} bytes (model {accounting['model_bytes']:,} "
            f"{accounting['compressor']} + code {accounting['code_bytes']:,}); margin {accounting['margin']:,}"
            + ("  OVER THE CAP" if accounting["over_cap"] else ""))
        total = accounting["total_bytes"]
        if "q" in q_stages:
            done(stage_q(ctx, q_state, t7, t6q, total))
        if "q_sw" in q_stages:
            if not cfg.eval.stride:
                raise ValueError("stage 'q_sw' needs eval.stride > 0 (the records use 64)")
            done(stage_q_sw(ctx, q_state, t7, total))
        if "q_ttt" in q_stages:
            done(stage_q_ttt(ctx, q_state, t7, total))
        if "q_ngram" in q_stages:
            done(stage_q_ngram(ctx, q_state, t7, total))
    if dist.is_main:
        write_stages(out_dir / "stages.json", records, train_dir=str(train_dir), artifact=accounting)
    train_s = ctx.run.get("train_seconds")
    return PipelineResult(
        records=records,
        train_seconds=None if train_s is None else train_s + ctx.run.get("calib_seconds", 0.0),
        eval_seconds=records[-1].seconds if records else None,
        artifact_bytes=accounting.get("total_bytes"),
        attn_backend=ctx.run.get("attn_backend") or build_model(cfg.model, device=device).attn_backend,
        artifact=accounting,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pgolf_core.pipeline", description=DESCRIPTION)
    ap.add_argument("train_dir", help="a training run folder (config.yaml, checkpoints/)")
    ap.add_argument("--out", required=True, help="folder for stages.json and artifact.bin")
    ap.add_argument("--stages", nargs="+", choices=STAGES, help="default: every stage the config enables")
    args = ap.parse_args(argv)
    cfg = load_config(Path(args.train_dir) / "config.yaml")
    dist = dist_info_from_env()
    try:
        result = run_stages(cfg, args.train_dir, args.out, stages=args.stages, dist=dist)
    finally:
        if dist.distributed and tdist.is_initialized():
            tdist.destroy_process_group()
    if dist.is_main:
        print(json.dumps({"event": "stages", "eval_seconds": result.eval_seconds,
                          "artifact_bytes": result.artifact_bytes,
                          "stages": {r.stage: r.val_bpb for r in result.records}}))
    return 0 if all(math.isfinite(r.val_bpb) for r in result.records) else 1

