"""What the index and the comparison page share: the stylesheet, the verdict badge and number formats.

Both pages are single self-contained HTML files (no script, no side files) and must fit a 1400 px wide
window: long names wrap anywhere, badges wrap, and the widest tables are laid out to the page's width.
"""

from __future__ import annotations

from importlib.resources import files

from jinja2 import Environment, select_autoescape

CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;padding:0 2em;color:#222;max-width:1500px}
h1{margin-bottom:.2em}h2{margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0 1.6em;max-width:100%}
th,td{border:1px solid #d4d4d4;padding:4px 7px;text-align:right;vertical-align:top}
th{background:#f3f3f3;font-weight:600}td.l,th.l{text-align:left}
.id{overflow-wrap:anywhere}td.runid{min-width:21em}.nw{white-space:nowrap}
.ok{color:#176c2a}.bad{color:#b00020;font-weight:600}.na{color:#888}
.badge{display:block;font-size:11px;line-height:1.25}.badge span{white-space:nowrap}
.st-completed{color:#176c2a}
.st-failed,.st-timeout,.st-dead_kernel,.st-unreadable,.st-interrupted{color:#b00020;font-weight:600}
.st-running{color:#a60}.small{font-size:12px;color:#555}.num{font-variant-numeric:tabular-nums}
.better{color:#1f5fa8}.worse{color:#8a4b00}.ref{color:#555;font-style:italic}
.err{display:block;font-size:11px;font-weight:400;max-width:22em;overflow-wrap:anywhere}
table.fit{width:100%}table.sub{margin:0;width:100%}table.sub td{border-color:#e6e6e6}
code{font-size:12px;background:#f5f5f5;padding:1px 4px;overflow-wrap:anywhere}
img.fig{max-width:100%;height:auto;border:1px solid #eee}
details summary{cursor:pointer}
@media (max-width:1100px){body{font-size:13px;padding:0 .8em}th,td{padding:3px 4px}}
"""

#: macros of both pages: a stage record's verdicts under its number (hover: every check's reason), and
#: a delta to the reference (with its standard error when the row has one)
BADGE = """
{% macro badge(st) %}
{% set failed = st.verdicts|selectattr("passed", "sameas", false)|map(attribute="check")|list %}
{% set passed = st.verdicts|selectattr("passed", "sameas", true)|list|length %}
{% set na = st.verdicts|selectattr("passed", "none")|list|length %}
<span class="badge {{ 'bad' if failed else 'ok' }}"
 title="{% for v in st.verdicts %}{{ v.label }} {{ v.check }}: {{ v.reason }}&#10;{% endfor %}">
{%- if failed %}<span>NON-COMPLIANT:</span> {{ failed|join(", ") }}
{%- else %}<span>compliant</span>
 <span>({{ passed }} pass{% if na %}, {{ na }} n/a{% endif %})</span>{% endif -%}
</span>
{%- endmacro %}
{% macro delta_cell(row, is_reference, missing) %}
{% if is_reference %}<span class="ref">reference</span>
{%- elif row.delta is none %}<span class="na">{{ missing }}</span>
{%- else %}{{ row.delta|delta }}{% if row.get("se") is not none %} &plusmn; {{ row.se|bpb }}{% endif %}
{%- if row.ref_compliant is false %}<span class="badge bad">vs a NON-COMPLIANT reference</span>{% endif %}
{%- endif %}
{%- endmacro %}
"""


def bpb(value: float | None, digits: int = 5) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def delta(value: float | None, digits: int = 5) -> str:
    """A signed difference with a real minus sign; the empty string when there is none."""
    if value is None:
        return ""
    return f"{value:+.{digits}f}".replace("-", "\u2212")


def delta_class(value: float | None) -> str:
    """bpb: lower is better."""
    if value is None or value == 0:
        return ""
    return "better" if value < 0 else "worse"


def environment() -> Environment:
    """Autoescaping; a block tag alone on its line leaves no blank line (the templates stay readable)."""
    env = Environment(autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)
    env.filters.update(bpb=bpb, delta=delta, delta_class=delta_class)
    return env


def template(name: str) -> str:
    """A page template from pgolf_core/report/templates/, with the shared macros in place of <!--BADGE-->."""
    text = files("pgolf_core.report").joinpath("templates", name).read_text(encoding="utf-8")
    return text.replace("<!--BADGE-->", BADGE)
