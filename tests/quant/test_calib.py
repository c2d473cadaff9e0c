"""Calibration batches: training tokens (never validation shards) or self-generated text."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from pgolf_core.config import QuantConfig, RunConfig
from pgolf_core.data.shards import write_shard
from pgolf_core.dist import DistInfo
from pgolf_core.quant import calibration_batches, self_generated_batches, train_calibration_batches
from tests.model.helpers import TINY, tiny_model


def shard_config(tmp_path, train_pattern: str) -> RunConfig:
    rng = np.random.default_rng(0)
    write_shard(tmp_path / "fineweb_train_000000.bin", rng.integers(0, 64, 5000), 64)
    write_shard(tmp_path / "fineweb_val_000000.bin", np.full(2000, 7), 64)  # all 7s: easy to spot
    return RunConfig.model_validate(
        {
            "data": {
                "source": "local",
                "root": str(tmp_path),
                "tokenizer": str(tmp_path / "t.model"),
                "train_pattern": train_pattern,
            },
            "model": {**TINY, "attn_backend": "sdpa"},
            "train": {"train_batch_tokens": 256, "train_seq_len": 32},
            "quant": {"calib_batches": 3},
        }
    )


def test_train_calibration_uses_training_shards_only(tmp_path):
    """quant.calib_batches batches of train_batch_tokens from the training stream; none is validation text."""
    cfg = shard_config(tmp_path, "fineweb_train_*.bin")
    batches = list(train_calibration_batches(cfg))
    assert len(batches) == 3 and all(x.shape == (8, 32) and y.shape == (8, 32) for x, y in batches)
    assert all(bool((x != 7).any()) for x, _ in batches)
    half = list(train_calibration_batches(cfg, DistInfo(1, 2, 0)))
    assert half[0][0].shape == (4, 32)  # a rank's share of the global batch


def test_train_calibration_refuses_a_glob_that_matches_validation(tmp_path):
    """A training glob that also matches a validation shard is an error, not a silent leak."""
    cfg = shard_config(tmp_path, "fineweb_*.bin")
    with pytest.raises(ValueError, match="calibration refuses validation shards"):
        next(train_calibration_batches(cfg))


def test_self_generated_batches_are_seeded_samples_of_the_model(tmp_path):
    """calib_source=self: n_seqs sequences of seq_len + 1 tokens in batches, identical for the same seed."""
    model = tiny_model()
    a = self_generated_batches(model, n_seqs=3, seq_len=8, vocab_size=64, batch_size=2, seed=5)
    b = self_generated_batches(model, n_seqs=3, seq_len=8, vocab_size=64, batch_size=2, seed=5)
    assert [x.shape for x, _ in a] == [(2, 8), (1, 8)]
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert torch.equal(a[0][0][:, 1:], a[0][1][:, :-1])  # y is x shifted by one
    cfg = shard_config(tmp_path, "fineweb_train_*.bin").model_copy(
        update={"quant": RunConfig().quant.model_copy(update={"calib_source": "self", "calib_seqs": 2})}
    )
    assert [x.shape for x, _ in calibration_batches(cfg, model)] == [(2, 32)]


def test_self_generated_defaults_are_the_config_defaults():
    """self_generated_batches samples at quant.calib_temperature's default when no temperature is given."""
    params = inspect.signature(self_generated_batches).parameters
    assert params["temperature"].default == QuantConfig().calib_temperature
