"""Model tests run on one intra-op thread: their matrices are tiny, and on a 2-core machine OpenMP
threads contending with any other process turn a microsecond matmul into milliseconds."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
