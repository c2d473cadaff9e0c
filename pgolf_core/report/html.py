"""Executed notebook -> self-contained HTML report: code hidden, figures embedded (notebooks.md 3)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from pgolf_core.atomic import atomic_write_text


def render_html(notebook: str | os.PathLike, out: str | os.PathLike, title: str | None = None) -> Path:
    """Write ``out`` from an executed notebook; inputs and prompts are excluded, outputs kept.

    PNG figures are already base64 data in the notebook, so the HTML needs no side files.
    ``--report-mode`` of papermill only hides code in JupyterLab; nbconvert needs exclude_input.
    """
    nb = nbformat.read(str(notebook), as_version=4)
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title or Path(notebook).stem}})
    return atomic_write_text(out, body)
