"""reports/index.html and index.json: every run side by side.

Built by globbing reports/<suite>/<run_id>/manifest.json (+ stages.json). Per run: status, per-stage bpb
with its compliance verdicts, artifact bytes, training and evaluation seconds against their 600 s
budgets, and links to the report. Runs of the same group (one configuration over several seeds) are
summarized with mean, standard deviation and each seed. Per suite, its configurations are compared to its
baseline (deltas of the means with their standard errors), with the ``pgolf compare`` command for their
runs and the comparison pages written under reports/_compare/. A failed or non-compliant number is shown
with its status or verdicts beside it, never alone.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

from pgolf_core.atomic import atomic_write_json, atomic_write_text
from pgolf_core.challenge import EVAL_SECONDS, TRAIN_SECONDS
from pgolf_core.errors import PgolfError
from pgolf_core.report.runs import stale_reason
from pgolf_core.report.style import CSS, environment, template
from pgolf_core.stages import STAGES, StageRecord, read_stages

#: where ``pgolf compare`` writes without --out, under the reports root; the leading underscore can
#: never be a suite's name (``check_name``), so the folder is never taken for runs
COMPARE_DIR = "_compare"


class UnreadableRun(PgolfError):
    """A run folder whose manifest.json or stages.json cannot be read; names the file and the reason."""

    def __init__(self, path: Path, cause: Exception, manifest: dict | None = None):
        super().__init__(f"{path}: {type(cause).__name__}: {cause}")
        self.path, self.cause, self.manifest = path, cause, manifest


def load_run(run_dir: str | os.PathLike) -> dict:
    """One run folder's manifest with its ``stages`` (StageRecords) and ``has_report``.

    A manifest left "running" by a killed driver is shown as "interrupted" with the reason. Raises
    UnreadableRun for a manifest or stages.json that cannot be read (corrupt, truncated, from another
    version); a missing stages.json is no stages.
    """
    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise TypeError(f"a JSON {type(manifest).__name__}, not an object")
    except (OSError, ValueError, TypeError) as e:
        raise UnreadableRun(manifest_path, e) from None
    stages_path = run_dir / "stages.json"
    try:
        stages: list[StageRecord] = read_stages(stages_path) if stages_path.is_file() else []
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # whatever a bad file raises
        raise UnreadableRun(stages_path, e, manifest) from None
    stale = stale_reason(manifest)
    if stale:  # a killed driver's run (settled in the file by the next run)
        manifest.update(status="interrupted", error=stale)
    manifest["stages"] = stages
    manifest["has_report"] = (run_dir / "report.html").is_file()
    return manifest


def _unreadable(path: Path, root: Path, e: Exception) -> dict:
    what = f"{path.relative_to(root).as_posix()}: {type(e).__name__}: {e}"
    return {
        "run_id": path.parent.name,
        "status": "unreadable",
        "error": what[:300],
        "dir": path.parent.relative_to(root).as_posix(),
        "stages": [],
    }


def collect_runs(reports_root: str | os.PathLike) -> list[dict]:
    """One dict per run folder, newest first. A manifest or stages.json that cannot be read makes its
    run "unreadable" with the file and the reason: one bad file never stops the index."""
    root = Path(reports_root)
    runs = []
    for manifest_path in sorted(root.glob("*/*/manifest.json")):
        try:
            manifest = load_run(manifest_path.parent)
        except UnreadableRun as e:
            bad = _unreadable(e.path, root, e.cause)
            if e.manifest is not None:
                bad |= {"notebook": e.manifest.get("notebook"), "suite": e.manifest.get("suite")}
            runs.append(bad)
            continue
        manifest["dir"] = manifest_path.parent.relative_to(root).as_posix()
        runs.append(manifest)
    runs.sort(key=lambda r: str(r.get("started_utc", "")), reverse=True)
    return runs


def group_key(run: dict) -> str:
    """The configuration a run belongs to: its group (one config over seeds), else the run itself."""
    return str(run.get("group") or run.get("run_id") or run.get("dir"))


def summarize_groups(runs: list[dict]) -> list[dict]:
    """Per group and stage: mean, sample std and per-seed bpb of completed runs."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        if r.get("status") == "completed":
            groups.setdefault(group_key(r), []).append(r)
    out = []
    for name, members in sorted(groups.items()):
        stage_names = [s for s in STAGES if any(st.stage == s for m in members for st in m["stages"])]
        extra = list(dict.fromkeys(st.stage for m in members for st in m["stages"] if st.stage not in STAGES))
        rows = []
        for stage in stage_names + extra:
            per_seed = sorted(
                ((m.get("seed"), st) for m in members for st in m["stages"] if st.stage == stage),
                key=lambda pair: (pair[0] is None, pair[0] if pair[0] is not None else 0),
            )
            values = [st.val_bpb for _, st in per_seed]
            rows.append(
                {
                    "stage": stage,
                    "n": len(values),
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else None,
                    "seeds": [(seed, st.val_bpb) for seed, st in per_seed],
                    "compliant": all(st.compliant for _, st in per_seed),
                }
            )
        out.append({"group": name, "runs": len(members), "rows": rows})
    return out


def group_deltas(groups: list[dict], reference: str | None) -> list[dict]:
    """``summarize_groups`` output with, per stage, the delta of the mean to the reference group's mean
    and its standard error ``sqrt(s1^2/n1 + s2^2/n2)`` where both groups have two or more seeds (the
    seed noise a difference has to exceed; None for the reference itself), and whether the reference's
    number is compliant.
    ``reference``: a group name; None or a name not among the groups leaves the deltas None."""
    ref_rows = next(({row["stage"]: row for row in g["rows"]} for g in groups if g["group"] == reference), {})
    out = []
    for g in groups:
        rows = []
        for row in g["rows"]:
            base = ref_rows.get(row["stage"])
            se = None
            if base is not None and row["n"] > 1 and base["n"] > 1 and g["group"] != reference:
                se = math.sqrt(row["std"] ** 2 / row["n"] + base["std"] ** 2 / base["n"])
            rows.append(
                {
                    **row,
                    "delta": row["mean"] - base["mean"] if base is not None else None,
                    "se": se,
                    "ref_compliant": base["compliant"] if base is not None else None,
                }
            )
        out.append({**g, "is_reference": g["group"] == reference, "rows": rows})
    return out


def suite_comparisons(runs: list[dict], groups: list[dict], root: Path) -> list[dict]:
    """Per suite with two or more configurations measured at the standard stages: each one's means
    with deltas to the suite's baseline (the group ``<suite>/baseline``, else the first by name), the
    ``pgolf compare`` command for their completed runs and its page when it exists."""
    completed = [r for r in runs if r.get("status") == "completed"]
    suite_of = {group_key(r): r.get("suite") for r in completed}
    by_suite: dict[str, list[dict]] = {}
    for g in groups:
        rows = [row for row in g["rows"] if row["stage"] in STAGES]
        if rows:
            by_suite.setdefault(str(suite_of.get(g["group"])), []).append({**g, "rows": rows})
    out = []
    for suite, members in sorted(by_suite.items()):
        if len(members) < 2:
            continue
        names = [g["group"] for g in members]
        reference = f"{suite}/baseline" if f"{suite}/baseline" in names else names[0]
        # the reference group's runs first (the first run is compare's reference), then by group and seed
        chosen = sorted(
            (r for r in completed if group_key(r) in names),
            key=lambda r: (group_key(r) != reference, group_key(r), str(r.get("seed")), r["dir"]),
        )
        page = f"{COMPARE_DIR}/{suite}.html"
        command = " ".join(
            ["pgolf compare", *(r["dir"] for r in chosen), "--out", (root / page).as_posix()]
            + ([] if root.name == "reports" else ["--reports", str(root)])
        )
        out.append(
            {
                "suite": suite,
                "reference": reference,
                "command": command,
                "page": page if (root / page).is_file() else None,
                "stages": [s for s in STAGES if any(row["stage"] == s for g in members for row in g["rows"])],
                "groups": [
                    {**g, "by_stage": {row["stage"]: row for row in g["rows"]}}
                    for g in group_deltas(members, reference)
                ],
            }
        )
    return out


def comparison_pages(root: Path) -> list[dict]:
    """The pages ``pgolf compare`` wrote under <root>/_compare/ (their JSON sidecars), newest first."""
    pages = []
    for sidecar in sorted((root / COMPARE_DIR).glob("*.json")):
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
            runs, reference = [str(r["label"]) for r in data["runs"]], str(data["reference"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a comparison's sidecar (or a half-written one): nothing to link
        if sidecar.with_suffix(".html").is_file():
            pages.append(
                {
                    "href": f"{COMPARE_DIR}/{sidecar.stem}.html",
                    "runs": runs,
                    "reference": reference,
                    "mtime": sidecar.stat().st_mtime,
                }
            )
    return sorted(pages, key=lambda p: -p["mtime"])


def run_view(r: dict) -> dict:
    outputs = r.get("outputs") if isinstance(r.get("outputs"), dict) else {}
    artifact = next((st.artifact_bytes for st in r["stages"] if st.artifact_bytes), None)
    params = r.get("params") if isinstance(r.get("params"), dict) else {}
    data = params.get("data") if isinstance(params.get("data"), dict) else {}
    caseops = bool(data.get("caseops"))  # shown beside the run: its bpb divides by the sidecar
    return {
        **r,
        "seed": r.get("seed"),
        "artifact_bytes": artifact or outputs.get("artifact_bytes"),
        "train_seconds": outputs.get("train_seconds"),
        "eval_seconds": outputs.get("eval_seconds"),
        "extra_stages": [st for st in r["stages"] if st.stage not in STAGES],
        "caseops": caseops,
        "bytes_sources": ", ".join(sorted({getattr(st, "bytes_source", "luts") for st in r["stages"]})),
    }


def build_index(reports_root: str | os.PathLike = "reports") -> Path:
    """Rebuild reports/index.html and reports/index.json; returns the HTML path."""
    root = Path(reports_root)
    root.mkdir(parents=True, exist_ok=True)
    runs = [run_view(r) for r in collect_runs(root)]
    groups = summarize_groups(runs)
    # stage columns only for the standard stages some run has: empty columns pushed the table wide
    shown = [s for s in STAGES if any(st.stage == s for r in runs for st in r["stages"])]
    comparisons = suite_comparisons(runs, groups, root)
    html = (
        environment()
        .from_string(template("index.html.j2"))
        .render(
            css=CSS,
            runs=runs,
            groups=groups,
            stages=shown,
            comparisons=comparisons,
            pages=comparison_pages(root),
            train_budget=TRAIN_SECONDS,
            eval_budget=EVAL_SECONDS,
        )
    )
    atomic_write_text(root / "index.html", html)
    atomic_write_json(
        root / "index.json",
        {
            "runs": [
                {k: v for k, v in r.items() if k not in ("stages", "extra_stages")}
                | {"stages": [s.as_dict() for s in r["stages"]]}
                for r in runs
            ],
            "groups": [{**g, "rows": [{k: v for k, v in row.items()} for row in g["rows"]]} for g in groups],
            "comparisons": [
                {**c, "groups": [{k: v for k, v in g.items() if k != "by_stage"} for g in c["groups"]]}
                for c in comparisons
            ],
        },
    )
    return root / "index.html"
