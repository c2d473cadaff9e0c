"""Compressors, byte shuffle and the automatic choice of the smallest artifact."""

from __future__ import annotations

import lzma
import os
import shutil
import zlib

import brotli
import pytest
import torch

from pgolf_core.config import QuantConfig, QuantGroupConfig
from pgolf_core.quant import build_artifact
from pgolf_core.quant.compress import (
    COMPRESSORS,
    DecompressError,
    compress,
    decompress,
    lrzip_status,
    shuffle,
    unshuffle,
)
from tests.model.helpers import tiny_model


@pytest.mark.parametrize("method", COMPRESSORS)
def test_compress_decompress_identity(method):
    """Every compressor round-trips arbitrary bytes, the empty string included."""
    for data in (b"", os.urandom(3000) + bytes(5000)):
        assert decompress(compress(data, method), method, len(data)) == data


def _fast_compress(data: bytes, method: str) -> bytes:
    """The lowest-effort stream each decoder accepts (making a bomb at quality 11 takes seconds)."""
    if method == "zlib":
        return zlib.compress(data, 1)
    if method == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 0}])
    return brotli.compress(data, quality=0)


@pytest.mark.parametrize("method", COMPRESSORS)
def test_decompress_refuses_a_size_other_than_declared(method):
    """A stream that expands past its declared size (a bomb) or falls short is an error, not a huge
    allocation.
    """
    bomb = _fast_compress(bytes(20_000_000), method)
    assert len(bomb) < 100_000
    with pytest.raises(DecompressError, match="header says 1000"):
        decompress(bomb, method, 1000)
    with pytest.raises(DecompressError):
        decompress(compress(b"abc" * 100, method), method, 301)


def test_byte_shuffle_groups_bytes_and_inverts():
    """stride 2: all low bytes, then all high bytes; unshuffle restores the input."""
    data = bytes(range(10))
    assert shuffle(data, 2) == bytes([0, 2, 4, 6, 8, 1, 3, 5, 7, 9])
    for stride in (1, 2, 4, 8):
        blob = os.urandom(64 * stride)
        assert unshuffle(shuffle(blob, stride), stride) == blob
    with pytest.raises(ValueError, match="multiple of stride 4"):
        shuffle(b"abcdef", 4)


def test_byte_shuffle_shrinks_fp16_data():
    """fp16 values of similar magnitude: shuffled, zlib-9 output is ~7% smaller (why #1218 shuffled
    the blob)."""
    half = (torch.randn(100_000, generator=torch.Generator().manual_seed(0)) * 0.02).half()
    raw = half.view(torch.uint8).numpy().tobytes()
    plain, shuffled = len(zlib.compress(raw, 9)), len(zlib.compress(shuffle(raw, 2), 9))
    assert shuffled / plain == pytest.approx(0.933, abs=0.01)


@pytest.mark.parametrize("lrzip", ["installed", "missing"])
def test_auto_compressor_picks_the_smallest_candidate_and_records_it(lrzip, monkeypatch):
    """auto x auto builds all seven blobs (3 codecs x 2 layouts + pergroup, with lrzip where it is
    installed), keeps the smallest and records every size; an explicit config of the winner is the same
    blob."""
    if lrzip == "missing":
        monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    elif shutil.which("lrzip") is None:
        pytest.skip("lrzip is not installed here")
    model = tiny_model()
    qcfg = QuantConfig(
        scheme="groups",
        keep_float_max_numel=1024,
        compressor="auto",
        byte_shuffle="auto",
        attn=QuantGroupConfig(bits=6),
        mlp=QuantGroupConfig(bits=6),
    )
    art = build_artifact(model, qcfg)
    cands = art.details["candidates"]
    pergroup = "pergroup+lrzip" if lrzip == "installed" else "pergroup+brotli"
    assert sorted(cands) == sorted(
        ["zlib", "zlib+shuffle", "lzma", "lzma+shuffle", "brotli", "brotli+shuffle", pergroup]
    )
    assert art.details["lrzip"] == ("lrzip: not installed" if lrzip == "missing" else lrzip_status())
    assert art.model_bytes == min(cands.values()) and cands[art.compressor] == art.model_bytes
    comp, _, shuf = art.compressor.partition("+")
    if comp == "pergroup":
        update = {"compressor": "pergroup"}
    else:
        update = {"compressor": comp, "byte_shuffle": "on" if shuf else "off"}
    explicit = build_artifact(model, qcfg.model_copy(update=update))
    assert explicit.blob == art.blob
    assert cands["brotli"] < cands["zlib"]  # int6 codes in int8 bytes: a real entropy coder wins
    if shuf == "shuffle":
        assert set(art.details["section_bytes"]) <= {"embed", "attn", "mlp", "gate", "other"}
