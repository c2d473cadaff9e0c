"""reports/index.html and index.json: every run side by side.

Built by globbing reports/<suite>/<run_id>/manifest.json (+ stages.json). Per run: status, per-stage bpb
with its compliance verdicts, artifact bytes, training and evaluation seconds against their 600 s
budgets, and links to the report. Runs of the same group (one configuration over several seeds) are
summarized with mean, standard deviation and each seed. A failed or non-compliant number is shown with
its status or verdicts beside it, never alone.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from jinja2 import Environment, select_autoescape

from pgolf_core.atomic import atomic_write_json, atomic_write_text
from pgolf_core.report.runs import stale_reason
from pgolf_core.stages import STAGES, StageRecord, read_stages

BUDGET_SECONDS = 600.0


def _unreadable(path: Path, root: Path, e: Exception) -> dict:
    what = f"{path.relative_to(root).as_posix()}: {type(e).__name__}: {e}"
    return {"run_id": path.parent.name, "status": "unreadable", "error": what[:300],
            "dir": path.parent.relative_to(root).as_posix(), "stages": []}


def collect_runs(reports_root: str | os.PathLike) -> list[dict]:
    """One dict per run folder, newest first. A manifest or stages.json that cannot be read (corrupt,
    truncated, from another version) makes its run "unreadable" with the file and the reason: one bad
    file never stops the index."""
    root = Path(reports_root)
    runs = []
    for manifest_path in sorted(root.glob("*/*/manifest.json")):
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if not isinstance(manifest, dict):
                raise TypeError(f"a JSON {type(manifest).__name__}, not an object")
        except (OSError, ValueError, TypeError) as e:
            runs.append(_unreadable(manifest_path, root, e))
            continue
        stages_path = manifest_path.parent / "stages.json"
        try:
            stages: list[StageRecord] = read_stages(stages_path) if stages_path.is_file() else []
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # whatever a bad file raises
            runs.append(_unreadable(stages_path, root, e) | {"notebook": manifest.get("notebook"),
                                                               "suite": manifest.get("suite")})
            continue
        stale = stale_reason(manifest)
        if stale:  # a killed driver's run (settled in the file by the next run)
            manifest.update(status="interrupted", error=stale)
        manifest["dir"] = manifest_path.parent.relative_to(root).as_posix()
        manifest["stages"] = stages
        manifest["has_report"] = (manifest_path.parent / "report.html").is_file()
        runs.append(manifest)
    runs.sort(key=lambda r: str(r.get("started_utc", "")), reverse=True)
    return runs


def summarize_groups(runs: list[dict]) -> list[dict]:
    """Per group and stage: mean, sample std and per-seed bpb of completed runs."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        if r.get("status") == "completed":
            groups.setdefault(str(r.get("group") or r.get("run_id") or r.get("dir")), []).append(r)
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
            rows.append({
                "stage": stage,
                "n": len(values),
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "seeds": [(seed, st.val_bpb) for seed, st in per_seed],
                "compliant": all(st.compliant for _, st in per_seed),
            })
        out.append({"group": name, "runs": len(members), "rows": rows})
    return out


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pgolf reports</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222;max-width:1500px}
h1{margin-bottom:.2em}table{border-collapse:collapse;margin:.6em 0 1.6em}
th,td{border:1px solid #d4d4d4;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f3f3f3;font-weight:600}td.l,th.l{text-align:left}
.ok{color:#176c2a}.bad{color:#b00020;font-weight:600}.na{color:#888}
.badge{display:block;font-size:11px;white-space:nowrap}
.st-completed{color:#176c2a}
.st-failed,.st-timeout,.st-dead_kernel,.st-unreadable,.st-interrupted{color:#b00020;font-weight:600}
.st-running{color:#a60}.small{font-size:12px;color:#555}.num{font-variant-numeric:tabular-nums}
</style></head><body>
{% macro badge(st) -%}
{%- set failed = st.verdicts|selectattr("passed", "sameas", false)|map(attribute="check")|list -%}
{%- set passed = st.verdicts|selectattr("passed", "sameas", true)|list|length -%}
{%- set na = st.verdicts|selectattr("passed", "none")|list|length -%}
<span class="badge {{ 'bad' if failed else 'ok' }}" title="{% for v in st.verdicts %}{{ v.label }} {{ v.check }}: {{ v.reason }}&#10;{% endfor %}">
{%- if failed %}NON-COMPLIANT: {{ failed|join(", ") }}{% else %}compliant ({{ passed }} pass{% if na %}, {{ na }} n/a{% endif %}){% endif %}</span>
{%- endmacro %}
<h1>pgolf reports</h1>
<p class="small">{{ runs|length }} run(s). bpb: bits per byte on the validation split. Under every number, its compliance
verdicts (hover for each check's reason): T1 future perturbation, T1b target independence, T2 normalization, T3 uniform
floor, T4 exactly once, T5 score before update, T6 data tripwires, T7 artifact size, T8 time, T9 data split, T10 byte recount.
Times are seconds against the 600 s budgets, which are defined on 8xH100 SXM.</p>
{% if groups %}<h2>Configurations (mean over seeds)</h2>
<table><tr><th class="l">group</th><th>runs</th><th class="l">stage</th><th>mean bpb</th><th>std</th><th class="l">per seed</th><th class="l">compliance</th></tr>
{% for g in groups %}{% for row in g.rows %}<tr>{% if loop.first %}<td class="l" rowspan="{{ g.rows|length }}">{{ g.group }}</td><td rowspan="{{ g.rows|length }}">{{ g.runs }}</td>{% endif %}
<td class="l">{{ row.stage }}</td><td class="num">{{ "%.5f"|format(row.mean) }}</td><td class="num">{{ "%.5f"|format(row.std) if row.std is not none else "" }}</td>
<td class="l num">{% for seed, v in row.seeds %}{{ seed }}: {{ "%.5f"|format(v) }}{% if not loop.last %}, {% endif %}{% endfor %}</td>
<td class="l {{ 'ok' if row.compliant else 'bad' }}">{{ "compliant" if row.compliant else "NON-COMPLIANT" }}</td></tr>{% endfor %}{% endfor %}
</table>{% endif %}
{% set bad = runs|selectattr("status", "equalto", "unreadable")|list %}{% if bad %}
<p class="bad">{{ bad|length }} unreadable record(s), shown without numbers:</p><ul class="small">
{% for r in bad %}<li>{{ r.error }}</li>{% endfor %}</ul>{% endif %}
<h2>Runs</h2>
<table><tr><th class="l">run</th><th class="l">notebook</th><th class="l">status</th><th>seed</th>
{% for s in stages %}<th>{{ s }}</th>{% endfor %}<th>artifact bytes</th><th>train s</th><th>eval s</th><th class="l">backend</th><th class="l">links</th></tr>
{% for r in runs %}<tr><td class="l">{{ r.suite }}/<br>{{ r.run_id }}</td><td class="l">{{ (r.notebook or "").split("/")[-1] }}</td>
<td class="l st-{{ r.status }}" title="{{ r.error or '' }}">{{ r.status }}{% if r.error %}<span class="badge bad">{{ r.error.splitlines()[0][:80] }}</span>{% endif %}</td>
<td>{{ r.seed if r.seed is not none else "" }}</td>
{% for s in stages %}<td class="num">{% for st in r.stages if st.stage == s %}{{ "%.4f"|format(st.val_bpb) }}{{ badge(st) }}{% endfor %}</td>{% endfor %}
<td class="num">{{ "{:,}".format(r.artifact_bytes) if r.artifact_bytes else "" }}</td>
<td class="num">{{ "%.1f"|format(r.train_seconds) if r.train_seconds is not none else "" }}</td><td class="num">{{ "%.1f"|format(r.eval_seconds) if r.eval_seconds is not none else "" }}</td>
<td class="l">{{ r.attn_backend or "" }}</td>
<td class="l">{% if r.has_report %}<a href="{{ r.dir }}/report.html">report</a><br>{% endif %}<a href="{{ r.dir }}/manifest.json">manifest</a></td></tr>
{% if r.extra_stages %}<tr><td></td><td class="l small" colspan="{{ 3 + stages|length }}"><table style="margin:0">{% for st in r.extra_stages %}<tr><td class="l">{{ st.stage }}</td><td class="num">{{ "%.4f"|format(st.val_bpb) }}</td><td class="l">{{ badge(st) }}</td><td class="l small">{{ st.notes[:90] }}</td></tr>{% endfor %}</table></td><td colspan="5"></td></tr>{% endif %}
{% endfor %}</table>
</body></html>
"""


def _run_view(r: dict) -> dict:
    outputs = r.get("outputs") if isinstance(r.get("outputs"), dict) else {}
    artifact = next((st.artifact_bytes for st in r["stages"] if st.artifact_bytes), None)
    return {
        **r,
        "seed": r.get("seed"),
        "artifact_bytes": artifact or outputs.get("artifact_bytes"),
        "train_seconds": outputs.get("train_seconds"),
        "eval_seconds": outputs.get("eval_seconds"),
        "extra_stages": [st for st in r["stages"] if st.stage not in STAGES],
    }


def build_index(reports_root: str | os.PathLike = "reports") -> Path:
    """Rebuild reports/index.html and reports/index.json; returns the HTML path."""
    root = Path(reports_root)
    root.mkdir(parents=True, exist_ok=True)
    runs = [_run_view(r) for r in collect_runs(root)]
    groups = summarize_groups(runs)
    env = Environment(autoescape=select_autoescape(default=True))
    html = env.from_string(_TEMPLATE).render(runs=runs, groups=groups, stages=STAGES)
    atomic_write_text(root / "index.html", html)
    atomic_write_json(root / "index.json", {
        "runs": [{k: v for k, v in r.items() if k not in ("stages", "extra_stages")} | {"stages": [s.as_dict() for s in r["stages"]]} for r in runs],
        "groups": [{**g, "rows": [{k: v for k, v in row.items()} for row in g["rows"]]} for g in groups],
    })
    return root / "index.html"
