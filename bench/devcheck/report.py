"""The device check's reports: device_check.json (everything) and device_check.md (for people)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.devcheck.runner import Section, SectionResult

MD_NAME, JSON_NAME = "device_check.md", "device_check.json"


def fmt(value: Any) -> str:
    """A table cell: floats to 4 significant digits (scientific when small), ints with separators."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3e}"
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.1f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return out


def status_text(r: SectionResult) -> str:
    return f"{r.status}: {r.reason}" if r.reason else r.status


def summary_counts(results: list[SectionResult]) -> dict[str, int]:
    counts = {k: 0 for k in ("ok", "failed", "timeout", "skipped")}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def plan_lines(sections: list[Section], deadline_s: float) -> list[str]:
    """What the check would run: each section with its budget (printed on every machine)."""
    total = sum(s.budget_s for s in sections)
    first = (
        f"device check plan: {len(sections)} sections, budgets {total:.0f} s in all, global deadline "
        f"{deadline_s:.0f} s (a section starts when half its budget is left, what does not fit is skipped)"
    )
    lines = [first]
    for i, s in enumerate(sections, 1):
        lines.append(f"  {i}. {s.name:<15} {s.budget_s:>4.0f} s  {s.what}")
    return lines


def render_markdown(header: dict, sections: list[Section], results: list[SectionResult]) -> str:
    out = ["# pgolf device check", ""]
    out += [f"- {k}: {fmt(v)}" for k, v in header.items()]
    counts = summary_counts(results)
    out += ["", "Sections: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n), ""]
    rows = []
    for s, r in zip(sections, results):
        judged = [c for c in r.checks if c.passed is not None]
        passed = sum(c.passed is True for c in judged)
        rows.append(
            [
                s.name,
                status_text(r),
                f"{r.seconds:.1f} / {s.budget_s:.0f}",
                f"{passed}/{len(judged)}" if judged else "",
            ]
        )
    out += _md_table(["section", "status", "seconds / budget", "checks passed"], rows)
    out += ["", "## Plan", "", "```", *plan_lines(sections, header.get("deadline_s", 0.0)), "```"]
    for s, r in zip(sections, results):
        out += [
            "",
            f"## {s.name}: {s.title}",
            "",
            f"**{status_text(r)}** ({r.seconds:.1f} s of {s.budget_s:.0f} s)",
            "",
            s.what,
        ]
        if r.checks:
            out += [
                "",
                *_md_table(
                    ["check", "value", "tolerance", "result", "detail"],
                    [
                        [
                            c.name,
                            c.value,
                            c.limit,
                            {True: "pass", False: "FAIL", None: "-"}[c.passed],
                            c.detail,
                        ]
                        for c in r.checks
                    ],
                ),
            ]
        for t in r.tables:
            out += ["", f"**{t.title}**", "", *_md_table(t.columns, t.rows)]
            if t.note:
                out += ["", t.note]
        if r.notes:
            out += [""] + [f"- {n}" for n in r.notes]
        if r.errors:
            out += ["", "Errors:", ""] + [line for e in r.errors for line in ("```", e, "```")]
    return "\n".join(out) + "\n"


def write_reports(
    out_dir: Path, header: dict, sections: list[Section], results: list[SectionResult]
) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        **header,
        "summary": summary_counts(results),
        "sections": [
            {"what": s.what, "needs_cuda": s.needs_cuda, **r.to_dict()} for s, r in zip(sections, results)
        ],
    }
    json_path, md_path = out_dir / JSON_NAME, out_dir / MD_NAME
    json_path.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(header, sections, results), encoding="utf-8")
    return md_path, json_path
