"""Runs side by side: their training curves and a per-stage bpb table with deltas to a reference run.

A run is a report folder reports/<suite>/<run_id>/ (manifest.json, stages.json, train/metrics.jsonl),
named by its path or as ``<suite>/<run_id>`` under the reports root. This module only reads and
computes (no matplotlib); ``pgolf_core.report.compare_page`` draws and writes the page.

Deltas are ``bpb - reference bpb`` of the same stage (negative: better than the reference). Runs of one
group (one configuration over seeds) are summarized with mean, sample std and n; a group's delta is
between means, with its standard error where both groups have two or more seeds (``group_deltas``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pgolf_core.errors import PgolfError
from pgolf_core.report.index import UnreadableRun, group_deltas, group_key, load_run, summarize_groups
from pgolf_core.stages import STAGES


class CompareError(PgolfError):
    """A run to compare that cannot be found or read; the message names the folder or file."""


# --------------------------------------------------------------------------------------------------
# reading runs
# --------------------------------------------------------------------------------------------------


def resolve_run(spec: str, reports_root: str | os.PathLike = "reports") -> Path:
    """The run folder ``spec`` names: a path to it, or ``<suite>/<run_id>`` under ``reports_root``."""
    candidates = [Path(spec)]
    if not Path(spec).is_absolute():
        candidates.append(Path(reports_root) / spec)
    for folder in candidates:
        if (folder / "manifest.json").is_file():
            return folder
    for folder in candidates:
        if folder.is_dir():
            raise CompareError(
                f"{folder}: not a report run folder (no manifest.json); expected reports/<suite>/<run_id>/"
            )
    looked = " or ".join(str(c) for c in candidates)
    raise CompareError(
        f"run {spec!r}: no run folder at {looked} (give reports/<suite>/<run_id> or <suite>/<run_id>)"
    )


def read_metrics(path: Path) -> tuple[list[dict], str]:
    """metrics.jsonl records and a note; a bad line is an error naming it, except a truncated last line
    (a run killed while it wrote), which is left out and noted."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CompareError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    lines = [(i, ln) for i, ln in enumerate(lines, 1) if ln.strip()]
    records, note = [], ""
    for k, (i, ln) in enumerate(lines):
        try:
            rec = json.loads(ln)
        except ValueError as e:
            if k == len(lines) - 1:
                note = f"{path.name} line {i} is truncated and left out"
                continue
            raise CompareError(f"{path} line {i}: not a JSON object ({e})") from None
        if not isinstance(rec, dict):
            raise CompareError(f"{path} line {i}: a JSON {type(rec).__name__}, expected an object")
        records.append(rec)
    return records, note


def _source_train(run_dir: Path, source_run: str) -> Path | None:
    """The train/ folder of the run an analysis notebook read (``source_run`` was written relative to
    the driver's working directory, usually the reports root's parent)."""
    src = Path(source_run)
    options = [src] if src.is_absolute() else [src, run_dir.parents[2] / src, run_dir.parent / src.name]
    return next((o / "train" for o in options if (o / "train" / "metrics.jsonl").is_file()), None)


def read_run(spec: str, reports_root: str | os.PathLike = "reports") -> dict:
    """The manifest of one run with its stages, ``path``, training ``metrics`` and where they came from.

    An analysis run (``pgolf run --source``) has no train/ of its own: its curves are its source run's.
    """
    path = resolve_run(spec, reports_root)
    try:
        run = load_run(path)
    except UnreadableRun as e:
        raise CompareError(str(e)) from None
    run["path"] = path
    train = path / "train"
    if not (train / "metrics.jsonl").is_file() and run.get("source_run"):
        train = _source_train(path, str(run["source_run"])) or train
    metrics_file = train / "metrics.jsonl"
    run["metrics"], run["metrics_note"] = ([], "no train/metrics.jsonl: no curves")
    if metrics_file.is_file():
        run["metrics"], run["metrics_note"] = read_metrics(metrics_file)
        if train.parent != path:
            run["metrics_note"] = "; ".join(
                filter(None, [f"curves of its source run {train.parent.name}", run["metrics_note"]])
            )
    run["metrics_file"] = metrics_file
    return run


def label_runs(runs: list[dict]) -> None:
    """``label``: the group and seed, which is how a researcher names a run; the run id where two
    chosen runs would otherwise share a label (a configuration run twice with one seed)."""

    def base(r):
        group = r.get("group") or f"{r.get('suite')}/{r.get('run_id')}"
        return f"{group} seed {r['seed']}" if r.get("seed") is not None else str(group)

    names = [base(r) for r in runs]
    for r, name in zip(runs, names, strict=True):
        r["label"] = name if names.count(name) == 1 else f"{name} ({r.get('run_id')})"


# --------------------------------------------------------------------------------------------------
# the numbers
# --------------------------------------------------------------------------------------------------


def _stage_order(stage_names) -> list[str]:
    names = list(dict.fromkeys(stage_names))
    return [s for s in STAGES if s in names] + [s for s in names if s not in STAGES]


def _failed(st) -> list[str]:
    return [v.check for v in st.verdicts if v.passed is False]


def stage_table(runs: list[dict], reference: int = 0) -> list[dict]:
    """Per stage, one row per run that has it: bpb, delta to the reference run's bpb of that stage
    (None where the reference lacks the stage, 0 for the reference itself), and both verdicts."""
    ref = {st.stage: st for st in runs[reference]["stages"]}
    out = []
    for stage in _stage_order(st.stage for r in runs for st in r["stages"]):
        rows = []
        for i, r in enumerate(runs):
            for st in (s for s in r["stages"] if s.stage == stage):
                base = ref.get(stage)
                rows.append(
                    {
                        "run": r["label"],
                        "is_reference": i == reference,
                        "bpb": st.val_bpb,
                        "delta": st.val_bpb - base.val_bpb if base is not None else None,
                        "compliant": st.compliant,
                        "failed": _failed(st),
                        "record": st,
                        "ref_compliant": base.compliant if base is not None else None,
                    }
                )
        out.append({"stage": stage, "rows": rows})
    return out


def compare_data(runs: list[dict], reference: int = 0) -> dict:
    """Everything the comparison page shows, as plain data: the runs, the per-stage table and the seed
    statistics of their groups (completed runs only, as in the index) with deltas to the reference's
    group. ``runs``: from ``read_run``; ``reference``: an index into them."""
    if not runs:
        raise CompareError("no runs to compare")
    if not 0 <= reference < len(runs):
        raise CompareError(f"reference {reference}: expected an index into the {len(runs)} runs")
    label_runs(runs)
    ref_group = group_key(runs[reference]) if runs[reference].get("status") == "completed" else None
    return {
        "reference": runs[reference]["label"],
        "reference_group": ref_group,
        "runs": runs,
        "stages": stage_table(runs, reference),
        "groups": group_deltas(summarize_groups(runs), ref_group),
    }


def as_json(data: dict) -> dict:
    """``compare_data`` without the objects (records, paths, metrics): the page's sidecar JSON."""
    runs = [
        {
            "label": r["label"],
            "dir": str(r["path"]),
            "run_id": r.get("run_id"),
            "suite": r.get("suite"),
            "group": r.get("group"),
            "seed": r.get("seed"),
            "status": r.get("status"),
            "metrics_note": r.get("metrics_note", ""),
        }
        for r in data["runs"]
    ]
    stages = [
        {"stage": s["stage"], "rows": [{k: v for k, v in row.items() if k != "record"} for row in s["rows"]]}
        for s in data["stages"]
    ]
    return {
        "reference": data["reference"],
        "reference_group": data["reference_group"],
        "runs": runs,
        "stages": stages,
        "groups": data["groups"],
    }
