"""Shared fixtures: the smoke dataset is built once per test session (about 5 s on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The challenge's official tokenizers: beside the checkout in ../shared/ on the team's machines, or in
# data/tokenizers/ after `pgolf data fetch`; where neither exists, tests that need them skip.
OFFICIAL_TOKENIZER_DIRS = (REPO.parent / "shared" / "data" / "tokenizers", REPO / "data" / "tokenizers")


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory) -> Path:
    from pgolf_core.data.smoke import build_smoke_dataset

    out = tmp_path_factory.mktemp("smoke") / "smoke"
    build_smoke_dataset(out, progress=False)
    return out


@pytest.fixture(scope="session")
def smoke_manifest(smoke_dir) -> dict:
    from pgolf_core.data.export import read_manifest

    return read_manifest(smoke_dir)


def official_tokenizer(name: str) -> Path:
    for folder in OFFICIAL_TOKENIZER_DIRS:
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"official tokenizer {name} not found in {[str(d) for d in OFFICIAL_TOKENIZER_DIRS]}")
