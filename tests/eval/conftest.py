"""Evaluation-test fixtures: the CaseOps smoke dataset, built once per session (about 15 s on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smoke_caseops_dir(tmp_path_factory) -> Path:
    from pgolf_core.data.smoke import build_smoke_dataset

    out = tmp_path_factory.mktemp("smoke_caseops") / "smoke_caseops"
    build_smoke_dataset(out, progress=False, caseops=True)
    return out
