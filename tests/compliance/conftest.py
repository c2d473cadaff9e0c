"""One torch thread for the tiny models here: on this shared 2-core VM, two threads under load made one
pre-quant TTT fine-tune take 14.8 s instead of 0.17 s (spin-waiting workers)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
