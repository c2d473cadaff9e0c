"""Token streams and the distributed loader: wrap-around, disjoint rank spans, full coverage, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgolf_core.data.loader import DistributedTokenLoader, TokenStream, load_validation_tokens
from pgolf_core.data.shards import write_shard


@pytest.fixture
def shards(tmp_path):
    """Three shards (one empty) whose tokens are their global positions 0..16 (mod vocab)."""
    sizes = [5, 0, 12]
    files, start = [], 0
    for i, n in enumerate(sizes):
        files.append(write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", np.arange(start, start + n)))
        start += n
    return files, np.arange(start)


def test_stream_crosses_shards_skips_empty_ones_and_wraps(shards):
    files, everything = shards
    stream = TokenStream(files)
    got = np.concatenate([stream.take(4), stream.take(7), stream.take(30)])
    assert got.tolist() == np.tile(everything, 3)[:41].tolist()
    assert stream.epoch == 2


def test_stream_rejects_all_empty_shards(tmp_path):
    f = write_shard(tmp_path / "e.bin", [])
    with pytest.raises(ValueError, match="every shard is empty"):
        TokenStream([f])


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_rank_spans_are_disjoint_and_cover_the_stream(shards, world_size):
    """Per step, rank r gets span r of one contiguous chunk: no token twice, none skipped."""
    files, everything = shards
    seq_len, global_tokens = 2, 4 * world_size  # local: 4 tokens = 2 sequences of 2
    loaders = [DistributedTokenLoader(files, r, world_size) for r in range(world_size)]
    reference = TokenStream(files)
    for _step in range(6):
        chunk = reference.take(world_size * (global_tokens // world_size + 1))
        spans = []
        for r, loader in enumerate(loaders):
            x, y = loader.next_batch(global_tokens, seq_len)
            assert x.shape == y.shape == (2, seq_len) and x.dtype == torch.int64
            span = torch.cat([x.reshape(-1), y.reshape(-1)[-1:]])
            assert torch.equal(x.reshape(-1)[1:], y.reshape(-1)[:-1]), "y is x shifted by one"
            spans.append(span.numpy())
        assert np.concatenate(spans).tolist() == chunk.tolist()


def test_grad_accum_micro_batches_split_the_global_batch(shards):
    files, _ = shards
    loader = DistributedTokenLoader(files, 0, 1)
    x, _ = loader.next_batch(global_tokens=8, seq_len=2, grad_accum_steps=2)
    assert x.shape == (2, 2)


def test_indivisible_batch_gives_a_clear_error(shards):
    files, _ = shards
    loader = DistributedTokenLoader(files, 1, 2)
    with pytest.raises(
        ValueError, match=r"train_batch_tokens=10 must split into world_size=2 x grad_accum_steps=1"
    ):
        loader.next_batch(10, 2)
    with pytest.raises(ValueError, match="rank 2 is outside world_size 2"):
        DistributedTokenLoader(files, 2, 2)


def test_resume_from_state_continues_exactly(shards):
    files, _ = shards
    a = DistributedTokenLoader(files, 1, 2)
    for _ in range(3):
        a.next_batch(8, 2)
    state = a.state_dict()
    expected = [a.next_batch(8, 2) for _ in range(4)]
    b = DistributedTokenLoader(files, 1, 2)
    b.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, [b.next_batch(8, 2) for _ in range(4)], strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_resume_refuses_state_from_other_shards(shards, tmp_path):
    files, _ = shards
    state = TokenStream(files).state_dict()
    other = TokenStream([write_shard(tmp_path / "other.bin", [1, 2, 3])])
    with pytest.raises(ValueError, match="loader state was saved over shards"):
        other.load_state_dict(state)


def test_validation_tokens_are_whole_windows_plus_one(tmp_path):
    files = [
        write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(23)),
        write_shard(tmp_path / "fineweb_val_000001.bin", np.arange(10)),
    ]
    v = load_validation_tokens(files, seq_len=8)
    assert v.size == 4 * 8 + 1 and v[:23].tolist() == list(range(23)) and v[23:].tolist() == list(range(10))
    assert load_validation_tokens(files, seq_len=8, max_tokens=20).size == 2 * 8 + 1
    with pytest.raises(ValueError, match="too short for one 64-token window"):
        load_validation_tokens(files, seq_len=64)
