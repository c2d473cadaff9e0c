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
from pgolf_core.report.style import CSS, environment, template

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
        .from_string(template("compare.html.j2"))
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
