"""Evaluation tests run on one intra-op thread: the models are tiny, the machine has 2 shared cores,
and one thread also makes CPU results independent of how work is split across threads."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
