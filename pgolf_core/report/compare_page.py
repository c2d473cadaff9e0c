"""The comparison page: one self-contained HTML file (the curve figure embedded as base64 PNG) and a
JSON sidecar of the same numbers (``<out>.json``), which the index lists and links.

    pgolf compare RUN... [--reference RUN] [--out FILE]
"""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

from pgolf_core.atomic import atomic_write_json, atomic_write_text
from pgolf_core.report.compare import CompareError, as_json, compare_data, read_run
from pgolf_core.report.index import COMPARE_DIR, run_view
from pgolf_core.report.style import BADGE, CSS, environment

_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_LINESTYLES = ("-", "--", ":", "-.")

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pgolf comparison: {{ runs|length }} runs</title>
<style>{{ css|safe }}</style></head><body>
<!--BADGE-->
<h1>pgolf comparison</h1>
<p class="small">{{ runs|length }} run(s), generated {{ generated }}. Reference: <b>{{ reference }}</b>.
&Delta; = bpb &minus; the reference's bpb of the same stage (negative: better). bpb: bits per byte on the
validation split. Under every number, its compliance verdicts (hover for each check's reason).</p>

<h2>Runs</h2>
<table class="fit">
<tr><th class="l">run</th><th class="l">folder</th><th class="l">status</th><th>steps</th>
<th>train s</th><th>artifact bytes</th><th class="l">curves</th></tr>
{% for r in runs %}
<tr><td class="l">{{ r.label }}
  {%- if r.label == reference %} <span class="ref">(reference)</span>{% endif %}</td>
<td class="l small id">
  {%- if r.report_link %}<a href="{{ r.report_link }}">{{ r.dir_name }}</a>
  {%- else %}{{ r.dir_name }}{% endif %}</td>
<td class="l st-{{ r.status }}">{{ r.status }}
  {%- if r.error %}<span class="err">{{ r.error.splitlines()[0] }}</span>{% endif %}</td>
<td class="num">{{ r.steps if r.steps is not none else "" }}</td>
<td class="num">{{ "%.1f"|format(r.train_seconds) if r.train_seconds is not none else "" }}</td>
<td class="num">{{ "{:,}".format(r.artifact_bytes) if r.artifact_bytes else "" }}</td>
<td class="l small">{{ r.metrics_note or "train/metrics.jsonl" }}</td></tr>
{% endfor %}
</table>

<h2>Training curves</h2>
<img class="fig" alt="training loss and validation bpb against steps and seconds"
 src="data:image/png;base64,{{ figure }}">
<p class="small">Colour: configuration (group); line style: seed. Training seconds exclude in-loop validation.
{% if clipped %}
The y axes{% if clipped|length < 4 %} of {{ clipped|join(", ") }}{% endif %} are fitted to the curves after their
first tenth (the first steps' loss lies above), so that the runs' differences show.
{% endif %}
</p>

<h2>bpb per stage</h2>
<table>
<tr><th class="l">stage</th><th class="l">run</th><th>bpb</th><th>&Delta; vs reference</th>
<th class="l">compliance</th></tr>
{% for s in stages %}
{% for row in s.rows %}
<tr>
{% if loop.first %}<td class="l" rowspan="{{ s.rows|length }}"><b>{{ s.stage }}</b></td>{% endif %}
<td class="l">{{ row.run }}</td><td class="num">{{ row.bpb|bpb }}</td>
<td class="num {{ row.delta|delta_class }}">
  {{- delta_cell(row, row.is_reference, "reference has no " ~ s.stage) }}</td>
<td class="l">{{ badge(row.record) }}</td></tr>
{% endfor %}
{% endfor %}
</table>

<h2>Seed statistics per configuration</h2>
{% if groups %}
<p class="small">Completed runs of one group (one configuration, several seeds): mean, sample standard
deviation, n; &Delta; between the group's mean and the reference group's
{%- if reference_group %} ({{ reference_group }}){% endif %}, &plusmn; its standard error where both have
two or more seeds.</p>
<table>
<tr><th class="l">group</th><th class="l">stage</th><th>n</th><th>mean bpb</th><th>std</th>
<th class="l">per seed</th><th>&Delta; mean</th><th class="l">compliance</th></tr>
{% for g in groups %}
{% for row in g.rows %}
<tr>
{% if loop.first %}
<td class="l" rowspan="{{ g.rows|length }}">{{ g.group }}
  {%- if g.is_reference %} <span class="ref">(reference)</span>{% endif %}</td>
{% endif %}
<td class="l">{{ row.stage }}</td><td>{{ row.n }}</td><td class="num">{{ row.mean|bpb }}</td>
<td class="num">{{ row.std|bpb }}</td>
<td class="l num small">
  {%- for seed, v in row.seeds %}{{ seed }}: {{ v|bpb }}{% if not loop.last %}, {% endif %}{% endfor %}</td>
<td class="num {{ row.delta|delta_class }}">{{ delta_cell(row, g.is_reference, "\u2014") }}</td>
<td class="l {{ 'ok' if row.compliant else 'bad' }}">
  {{- "compliant" if row.compliant else "NON-COMPLIANT" }}</td>
</tr>
{% endfor %}
{% endfor %}
</table>
{% else %}
<p class="small">No completed runs among these.</p>
{% endif %}
</body></html>
"""  # noqa: E501 (HTML template text)


def curve_styles(runs: list[dict]) -> None:
    """``style`` per run: one colour per group, one line style per seed within it."""
    colors: dict[str, str] = {}
    seen: dict[str, int] = {}
    for r in runs:
        key = str(r.get("group") or r.get("label"))
        colors.setdefault(key, _COLORS[len(colors) % len(_COLORS)])
        k = seen[key] = seen.get(key, -1) + 1
        r["style"] = {"color": colors[key], "linestyle": _LINESTYLES[k % len(_LINESTYLES)]}


def curves_figure(runs: list[dict]):
    from pgolf_core.report import plots

    curve_styles(runs)
    return plots.overlay_curves(runs)


def _png_base64(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _run_rows(runs: list[dict], out_dir: Path) -> list[dict]:
    rows = []
    for r in runs:
        view = run_view(r)
        outputs = r.get("outputs") if isinstance(r.get("outputs"), dict) else {}
        report = r["path"] / "report.html"
        rows.append(
            {
                **view,
                "steps": outputs.get("steps"),
                "dir_name": f"{r.get('suite')}/{r['path'].name}",
                "report_link": os.path.relpath(report.resolve(), out_dir.resolve())
                if report.is_file()
                else None,
            }
        )
    return rows


def render_compare(data: dict, out_dir: Path) -> str:
    fig = curves_figure(data["runs"])
    clipped = getattr(fig, "clipped", [])
    return (
        environment()
        .from_string(_TEMPLATE.replace("<!--BADGE-->", BADGE))
        .render(
            css=CSS,
            runs=_run_rows(data["runs"], out_dir),
            figure=_png_base64(fig),
            clipped=clipped,
            stages=data["stages"],
            groups=data["groups"],
            reference=data["reference"],
            reference_group=data["reference_group"],
            generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        )
    )


def write_compare(
    specs: list[str],
    out: str | os.PathLike | None = None,
    reference: str | None = None,
    reports_root: str | os.PathLike = "reports",
) -> tuple[Path, dict]:
    """Read the runs ``specs`` name, write the page (and ``<out>.json``); returns (page, data).

    ``reference``: the run the deltas are taken to (a spec; default the first run); one not among
    ``specs`` is compared too, first. ``out``: default reports/_compare/compare-<time>.html.
    """
    if not specs:
        raise CompareError("no runs to compare: give one or more run folders")
    out = (
        Path(out)
        if out is not None
        else (Path(reports_root) / COMPARE_DIR / time.strftime("compare-%Y%m%dT%H%M%S.html", time.gmtime()))
    )
    if out.suffix.lower() not in (".html", ".htm"):
        raise CompareError(f"--out {out}: expected a file name ending in .html")
    runs = [read_run(s, reports_root) for s in specs]
    ref_index = 0
    if reference is not None:
        ref = read_run(reference, reports_root)
        paths = [r["path"].resolve() for r in runs]
        if ref["path"].resolve() in paths:
            ref_index = paths.index(ref["path"].resolve())
        else:
            runs.insert(0, ref)
    data = compare_data(runs, ref_index)
    out.parent.mkdir(parents=True, exist_ok=True)
    html = render_compare(data, out.parent)
    atomic_write_text(out, html)
    atomic_write_json(out.with_suffix(".json"), {"page": out.name, **as_json(data)})
    return out, data
