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
from pgolf_core.pipeline.roundtrip import StageWeights, quantize_weights
from pgolf_core.pipeline.session import Session
from pgolf_core.pipeline.stages import STAGE_FNS, stage_name
from pgolf_core.stages import STAGES, StageRecord, write_stages

DESCRIPTION = "The post-training stages of a run, each a StageRecord with its compliance verdicts."


@dataclass
class PipelineResult:
    """What ``run_stages`` computed: the records (as written to stages.json) and the run's figures."""

    records: list[StageRecord]
    train_seconds: float | None
    eval_seconds: float | None  # the last (submitted) stage's evaluation time
    artifact_bytes: int | None
    attn_backend: str
    artifact: dict = field(default_factory=dict)  # accounting and compressor of artifact.bin


def artifact_line(accounting: dict) -> str:
    return (
        f"artifact: {accounting['total_bytes']:,} bytes (model {accounting['model_bytes']:,} "
        f"{accounting['compressor']} + code {accounting['code_bytes']:,}); margin {accounting['margin']:,}"
        + ("  OVER THE CAP" if accounting["over_cap"] else "")
    )


def default_stages(cfg: RunConfig, have_ema: bool) -> list[str]:
    stages = ["pre"] + (["ema"] if have_ema else []) + ["q"]
    if cfg.eval.stride:
        stages.append("q_sw")
    if cfg.ttt.enabled or cfg.ttt.prequant_ablation:
        stages.append("q_ttt")
    if cfg.ngram.enabled:
        stages.append("q_ngram")
    if cfg.eval.tilt.enabled:
        stages.append("q_tilt")
        if cfg.ttt.enabled and not cfg.ttt.prequant_ablation:
            stages.append("q_ttt_tilt")  # #2135's score: the tilt on phased TTT's scored loss
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
        log(
            f"stage {rec.stage:<6} val_bpb {rec.val_bpb:.5f}  val_loss {rec.val_loss:.5f}  "
            f"{rec.seconds:7.1f}s  " + ("compliant" if not failed else f"NON-COMPLIANT ({', '.join(failed)})")
        )
        if dist.is_main:
            write_stages(out_dir / "stages.json", records, train_dir=str(train_dir), artifact=accounting)

    q: StageWeights | None = None
    for stage in STAGES:  # in the fixed order, whatever the order asked for
        if stage not in stages:
            continue
        if stage == "pre":
            weights = StageWeights(raw)
        elif stage == "ema":
            if ema is None:
                raise FileNotFoundError(f"{ckpt / 'final_ema.pt'}: stage 'ema' needs train.ema_decay > 0")
            weights = StageWeights(ema)
        else:
            if q is None:  # one round trip serves every q stage
                q = quantize_weights(ctx, ema if ema is not None else raw)
                accounting = q.accounting
                log(artifact_line(accounting))
            weights = q
        done(STAGE_FNS[stage](ctx, weights, stage_name(stage, cfg)))
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
        print(
            json.dumps(
                {
                    "event": "stages",
                    "eval_seconds": result.eval_seconds,
                    "artifact_bytes": result.artifact_bytes,
                    "stages": {r.stage: r.val_bpb for r in result.records},
                }
            )
        )
    return 0 if all(math.isfinite(r.val_bpb) for r in result.records) else 1
