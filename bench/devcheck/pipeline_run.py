"""Section ``pipeline``: the whole pipeline on one GPU, as a user runs it, in a subprocess with a timeout:
``pgolf suite params/h100x1 --only quick`` (train, every post-training stage, the rendered report)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from bench.devcheck.runner import Check, Context
from bench.devcheck.setup_env import run_bounded

SUITE, ENTRY = "params/h100x1", "quick"
EXPECTED_STAGES = ("pre", "q", "q_sw")  # quick.yaml: no EMA, no TTT; sliding window on
RESERVE_S = 5.0  # of the section's budget, kept for reading the results


def suite_command(reports: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pgolf_core.cli",
        "suite",
        SUITE,
        "--only",
        ENTRY,
        "--reports",
        str(reports),
    ]


def inspect_run(reports: Path) -> tuple[list[Check], list[list], dict]:
    """Checks on what the suite left under ``reports``: the run's manifest, report and stages."""
    runs = sorted((reports / Path(SUITE).name).glob(f"*-{ENTRY}/manifest.json"))
    if not runs:
        return (
            [
                Check(
                    "the run wrote its manifest",
                    None,
                    None,
                    False,
                    f"no */*-{ENTRY}/manifest.json under {reports}",
                )
            ],
            [],
            {},
        )
    run_dir = runs[-1].parent
    manifest = json.loads(runs[-1].read_text())
    checks = [
        Check(
            "run status",
            None,
            None,
            manifest.get("status") == "completed",
            f"{manifest.get('status')}" + (f": {manifest['error']}" if manifest.get("error") else ""),
        ),
        Check(
            "report.html rendered",
            None,
            None,
            (run_dir / "report.html").is_file()
            and (run_dir / "report.html").stat().st_size > 0
            and "render_error" not in manifest,
            manifest.get("render_error", str(run_dir / "report.html")),
        ),
    ]
    rows, stages = [], {}
    stages_file = run_dir / "stages.json"
    if stages_file.is_file():
        for rec in json.loads(stages_file.read_text())["stages"]:
            stages[rec["stage"]] = rec
            fails = [v["check"] for v in rec.get("verdicts", []) if v.get("passed") is False]
            rows.append(
                [
                    rec["stage"],
                    rec["val_bpb"],
                    rec["tokens"],
                    rec["seconds"],
                    rec.get("artifact_bytes"),
                    ", ".join(fails) or "none",
                ]
            )
    for stage in EXPECTED_STAGES:
        bpb = stages.get(stage, {}).get("val_bpb")
        checks.append(
            Check(f"stage {stage} scored (finite bpb)", bpb, None, bpb is not None and math.isfinite(bpb))
        )
    outputs = manifest.get("outputs", {})
    info = {
        "run_dir": str(run_dir),
        "seconds": manifest.get("seconds"),
        "attn_backend": manifest.get("attn_backend"),
        "outputs": {k: v for k, v in outputs.items() if isinstance(v, (int, float, str))},
    }
    return checks, rows, info


def section(ctx: Context) -> None:
    reports = ctx.out_dir / "pipeline"
    log = ctx.out_dir / "pipeline.log"
    cmd = suite_command(reports)
    ctx.note("command: " + " ".join(cmd[1:]) + f" (log: {log.name})")
    rc, seconds = run_bounded(cmd, ctx.left() - RESERVE_S, log)
    ctx.add(
        Check(
            "suite command finished within the budget",
            seconds,
            ctx.budget_s - RESERVE_S,
            rc is not None,
            "killed at the time limit" if rc is None else f"exit status {rc}",
        )
    )
    checks, rows, info = inspect_run(reports)
    for c in checks:
        ctx.add(c)
    t = ctx.table(
        "stages of the quick run",
        ["stage", "val bpb", "tokens", "seconds", "artifact bytes", "failed verdicts"],
    )
    for r in rows:
        ctx.row(t, r)
    ctx.data("run", info)
    if rc not in (None, 0) or any(c.passed is False for c in checks):
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-8:]
        ctx.note("last lines of the log: " + " / ".join(tail))
