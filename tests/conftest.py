"""Shared fixtures: the smoke dataset is built once per test session (about 10 s on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Under pytest-xdist (`make test` runs two workers on a 2-core machine) every worker and every process
# it starts (torchrun ranks, notebook kernels, CLI subprocesses) computes with one intra-op thread: two
# workers with torch's default two threads each oversubscribe the cores, and OpenMP workers spin-wait
# (see ONE_THREAD_DIRS below). Set before torch starts its thread pool; children inherit the variable.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

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
def smoke_caseops_dir(tmp_path_factory) -> Path:
    """The CaseOps smoke dataset (case-transformed shards, CaseOps tokenizer, validation byte sidecar)."""
    from pgolf_core.data.smoke import build_smoke_dataset

    out = tmp_path_factory.mktemp("smoke_caseops") / "smoke_caseops"
    build_smoke_dataset(out, progress=False, caseops=True)
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


# Folders of small-model unit tests: one intra-op thread. Their matrices are tiny, and on a shared 2-core
# machine OpenMP workers spin-wait: under load two threads made one pre-quant TTT fine-tune take 14.8 s
# instead of 0.17 s. One thread also makes CPU results independent of how work is split. The training
# and notebook tests keep torch's default (they run real, larger workloads).
ONE_THREAD_DIRS = ("compliance", "eval", "model", "quant")


@pytest.fixture(autouse=True)
def _one_thread_for_unit_tests(request):
    if Path(str(request.fspath)).parent.name not in ONE_THREAD_DIRS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
