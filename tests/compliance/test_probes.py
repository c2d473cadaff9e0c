"""Probe windows at seeded random offsets across the whole validation stream (for the pipeline's
scorer checks), and the positions and cuts the checks probe."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pgolf_core.compliance import probe_offsets, probe_positions, probe_windows


def test_windows_spread_over_the_whole_stream_without_overlap():
    n, w = 100_000, 2048
    offs = probe_offsets(n, w, n_windows=4, seed=0)
    assert len(offs) == 4 and offs == sorted(offs)
    for i, o in enumerate(offs):  # window i lies inside quarter i, so together they reach the end
        assert i * n // 4 <= o and o + w + 1 <= (i + 1) * n // 4
    assert all(b - a >= w + 1 for a, b in itertools.pairwise(offs))
    assert probe_offsets(n, w, n_windows=4, seed=0) == offs != probe_offsets(n, w, n_windows=4, seed=1)
    assert len({tuple(probe_offsets(n, w, seed=s)) for s in range(5)}) == 5


def test_fewer_windows_when_the_stream_is_short_and_a_clear_error_when_it_cannot_hold_one():
    assert len(probe_offsets(5000, 2048, n_windows=4)) == 2
    assert probe_offsets(2049, 2048, n_windows=4) == [0]
    with pytest.raises(ValueError, match="needs probe_tokens \\+ 1 = 2049 tokens .* the stream has 2000"):
        probe_offsets(2000, 2048)


def test_windows_start_at_a_document_when_asked():
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, 64, 50_000)
    bos = np.sort(rng.choice(50_000, 40, replace=False))
    tokens[bos] = 1
    plain = probe_offsets(tokens.size, 1000, n_windows=5, seed=3)
    snapped = probe_offsets(tokens.size, 1000, n_windows=5, seed=3, tokens=tokens, bos_id=1)
    assert snapped != plain
    seg_end = (np.arange(1, 6) * tokens.size) // 5
    for a, b, end in zip(plain, snapped, seg_end, strict=True):
        later = bos[(bos >= a) & (bos <= end - 1001)]  # BOS where a window still fits in the segment
        assert b == (later[0] if later.size else a)
    windows = probe_windows(tokens, 1000, n_windows=5, seed=3, bos_id=1)
    assert [o for o, _ in windows] == snapped
    assert all(win.dtype == np.int64 and np.array_equal(win, tokens[o : o + 1001]) for o, win in windows)


def test_probe_positions_cover_both_ends_and_every_stratum():
    pos = probe_positions(4097, n_positions=32, seed=5)
    assert pos.size == 34 and pos[0] == 1 and pos[-1] == 4096 and np.all(np.diff(pos) > 0)
    inner = pos[1:-1]
    edges = 2 + (np.arange(33) * 4094) // 32
    assert all(edges[i] <= p < edges[i + 1] for i, p in enumerate(inner))
    assert probe_positions(10, n_positions=32).tolist() == list(range(1, 10))
