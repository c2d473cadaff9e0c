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
from pgolf_core.stages import STAGES, StageRecord, read_stages

BUDGET_SECONDS = 600.0


def collect_runs(reports_root: str | os.PathLike) -> list[dict]:
    """One dict per run folder with a readable manifest, newest first."""
    root = Path(reports_root)
    runs = []
    for manifest_path in sorted(root.glob("*/*/manifest.json")):
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            runs.append({"run_id": manifest_path.parent.name, "status": "unreadable", "error": str(e),
                         "dir": manifest_path.parent.relative_to(root).as_posix(), "stages": []})
            continue
        stages_path = manifest_path.parent / "stages.json"
        stages: list[StageRecord] = read_stages(stages_path) if stages_path.is_file() else []
        manifest["dir"] = manifest_path.parent.relative_to(root).as_posix()
        manifest["stages"] = stages
        manifest["has_report"] = (manifest_path.parent / "report.html").is_file()
        runs.append(manifest)
    runs.sort(key=lambda r: r.get("started_utc", ""), reverse=True)
    return runs


def summarize_groups(runs: list[dict]) -> list[dict]:
    """Per group and stage: mean, sample std and per-seed bpb of completed runs."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        if r.get("status") == "completed":
            groups.setdefault(r.get("group", r["run_id"]), []).append(r)
    out = []
    for name, members in sorted(groups.items()):
        stage_names = [s for s in STAGES if any(st.stage == s for m in members for st in m["stages"])]
        extra = sorted({st.stage for m in members for st in m["stages"]} - set(stage_names))
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
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l{text-align:left}.pass{color:#176c2a}.FAIL{color:#b00020;font-weight:bold}
.n-a{color:#888}.st-completed{color:#176c2a}.st-failed,.st-timeout,.st-dead_kernel,.st-unreadable{color:#b00020;font-weight:bold}
.st-running{color:#a60}.small{font-size:12px;color:#555}
</style></head><body>
<h1>pgolf reports</h1>
<p class="small">{{ runs|length }} run(s). bpb = bits per byte on the validation split; verdicts are the
compliance checks (T1 future perturbation, T1b target independence, T2 normalization, T3 uniform floor,
T4 exactly once, T5 score before update, T6 tripwires, T7 artifact size, T8 time, T10 byte recount).</p>
{% if groups %}<h2>Groups (same configuration, several seeds)</h2>
<table><tr><th class="l">group</th><th>runs</th><th class="l">stage</th><th>mean bpb</th><th>std</th><th class="l">per seed</th><th class="l">compliant</th></tr>
{% for g in groups %}{% for row in g.rows %}<tr>{% if loop.first %}<td class="l" rowspan="{{ g.rows|length }}">{{ g.group }}</td><td rowspan="{{ g.rows|length }}">{{ g.runs }}</td>{% endif %}
<td class="l">{{ row.stage }}</td><td>{{ "%.5f"|format(row.mean) }}</td><td>{{ "%.5f"|format(row.std) if row.std is not none else "" }}</td>
<td class="l">{% for seed, v in row.seeds %}{{ seed }}: {{ "%.5f"|format(v) }}{% if not loop.last %}, {% endif %}{% endfor %}</td>
<td class="l {{ 'pass' if row.compliant else 'FAIL' }}">{{ "yes" if row.compliant else "NO" }}</td></tr>{% endfor %}{% endfor %}
</table>{% endif %}
<h2>Runs</h2>
<table><tr><th class="l">run</th><th class="l">suite</th><th class="l">notebook</th><th class="l">status</th><th>seed</th>
{% for s in stages %}<th>{{ s }}</th>{% endfor %}<th>artifact bytes</th><th>train s / 600</th><th>eval s / 600</th><th class="l">backend</th><th class="l">links</th></tr>
{% for r in runs %}<tr><td class="l">{{ r.run_id }}</td><td class="l">{{ r.suite }}</td><td class="l">{{ (r.notebook or "").split("/")[-1] }}</td>
<td class="l st-{{ r.status }}" title="{{ r.error or '' }}">{{ r.status }}</td><td>{{ r.seed if r.seed is not none else "" }}</td>
{% for s in stages %}<td>{% for st in r.stages if st.stage == s %}{{ "%.4f"|format(st.val_bpb) }}<br>{% for v in st.verdicts %}<span class="{{ v.label|replace('/', '-') }}" title="{{ v.check }}: {{ v.reason }}">{{ v.check }}:{{ v.label }}</span> {% endfor %}{% endfor %}</td>{% endfor %}
<td>{{ "{:,}".format(r.artifact_bytes) if r.artifact_bytes else "" }}</td>
<td>{{ "%.1f"|format(r.train_seconds) if r.train_seconds is not none else "" }}</td><td>{{ "%.1f"|format(r.eval_seconds) if r.eval_seconds is not none else "" }}</td>
<td class="l">{{ r.attn_backend or "" }}</td>
<td class="l">{% if r.has_report %}<a href="{{ r.dir }}/report.html">report</a> {% endif %}<a href="{{ r.dir }}/manifest.json">manifest</a></td></tr>
{% if r.extra_stages %}<tr><td class="l small" colspan="{{ 11 + stages|length - 6 }}">other stages: {% for st in r.extra_stages %}{{ st.stage }} {{ "%.4f"|format(st.val_bpb) }} ({% for v in st.verdicts if v.passed is sameas false %}{{ v.check }} FAIL {% else %}compliant{% endfor %}){% if not loop.last %}; {% endif %}{% endfor %}</td></tr>{% endif %}
{% endfor %}</table>
</body></html>
"""


def _run_view(r: dict) -> dict:
    outputs = r.get("outputs") or {}
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
