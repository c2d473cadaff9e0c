"""Executed notebook -> self-contained HTML report: code hidden, figures embedded (one file to share)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from pgolf_core.atomic import atomic_write_text

#: cells whose (long, live) log is replaced by a one-line note in the report when they succeeded; a
#: failed cell keeps its whole output so the report shows what went wrong
LOG_TAG = "log-output"


def _fold_logs(nb) -> None:
    for cell in nb.cells:
        if cell.cell_type != "code" or LOG_TAG not in cell.get("metadata", {}).get("tags", []):
            continue
        outputs = cell.get("outputs", [])
        if not outputs or any(o.get("output_type") == "error" for o in outputs):
            continue
        text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
        lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
        keep = [ln for ln in lines if not ln.lstrip().startswith("train:")][-6:]  # drop progress-bar states
        note = f"[{len(lines)} log lines, the last {len(keep)} shown; the full log is in the run folder]\n"
        cell["outputs"] = [
            nbformat.v4.new_output("stream", name="stdout", text=note + "\n".join(keep) + "\n")
        ]


def render_html(notebook: str | os.PathLike, out: str | os.PathLike, title: str | None = None) -> Path:
    """Write ``out`` from an executed notebook; inputs and prompts are excluded, outputs kept.

    PNG figures are already base64 data in the notebook, so the HTML needs no side files.
    ``--report-mode`` of papermill only hides code in JupyterLab; nbconvert needs exclude_input.
    Cells tagged ``log-output`` that succeeded show only their last lines (the executed notebook and
    the run folder keep everything).
    """
    nb = nbformat.read(str(notebook), as_version=4)
    _fold_logs(nb)
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title or Path(notebook).stem}})
    return atomic_write_text(out, body)
