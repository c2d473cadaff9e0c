"""Compressors and byte shuffling for the artifact.

zlib level 9 (the baseline), lzma preset 9 (#1019), brotli quality 11 with a 16 MiB window (#1218 on).
Byte shuffle with stride k writes byte 0 of every k-byte element, then byte 1, ...: the high bytes of
fp16/fp32 values (sign, exponent) are alike and compress far better together (#1218 on, stride 2 over
the whole torch.save blob). Decompression is bounded by the size the header declares, so a crafted
stream cannot inflate without limit.
"""

from __future__ import annotations

import lzma
import zlib

import brotli

COMPRESSORS = ("zlib", "lzma", "brotli")
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9}]


class DecompressError(ValueError):
    """A stream did not decompress to the declared size."""


def compress(data: bytes, method: str) -> bytes:
    if method == "zlib":
        return zlib.compress(data, 9)
    if method == "lzma":
        # Raw LZMA2 (no .xz container): 13+ bytes of framing fewer per stream, same ratio.
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    if method == "brotli":
        return brotli.compress(data, quality=11, lgwin=24)
    raise ValueError(f"unknown compressor {method!r}; expected one of {COMPRESSORS}")


def decompress(data: bytes, method: str, size: int) -> bytes:
    """Decompress ``data`` that must expand to exactly ``size`` bytes (never more is produced)."""
    try:
        if method == "zlib":
            d = zlib.decompressobj()
            out = d.decompress(data, size + 1)
            ok = d.eof and not d.unconsumed_tail and not d.unused_data
        elif method == "lzma":
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
            out = d.decompress(data, max_length=size + 1)
            ok = d.eof and not d.unused_data
        elif method == "brotli":
            d = brotli.Decompressor()
            out = d.process(data, output_buffer_limit=size + 1)  # stops growing past the declared size
            ok = d.is_finished()
        else:
            raise DecompressError(f"unknown compressor {method!r}; expected one of {COMPRESSORS}")
    except (zlib.error, lzma.LZMAError, brotli.error) as e:
        raise DecompressError(f"{method} stream is corrupt: {e}") from None
    if len(out) != size or not ok:
        raise DecompressError(
            f"{method} stream expands to {len(out)}{'+' if len(out) > size else ''} bytes, header says {size}"
        )
    return out


def shuffle(data: bytes, stride: int) -> bytes:
    """Byte-transpose ``data`` viewed as (n, stride) -> (stride, n); len(data) must divide by stride."""
    if stride == 1:
        return bytes(data)
    if len(data) % stride:
        raise ValueError(f"byte shuffle: {len(data)} bytes is not a multiple of stride {stride}")
    return b"".join(data[i::stride] for i in range(stride))


def unshuffle(data: bytes, stride: int) -> bytes:
    if stride == 1:
        return bytes(data)
    if len(data) % stride:
        raise ValueError(f"byte unshuffle: {len(data)} bytes is not a multiple of stride {stride}")
    n = len(data) // stride
    out = bytearray(len(data))
    for i in range(stride):
        out[i::stride] = data[i * n : (i + 1) * n]
    return bytes(out)
