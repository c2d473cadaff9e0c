"""The challenge's token shard format (its ``train_gpt.py`` and data export), read and written exactly.

A shard is a 1024-byte header of 256 little-endian int32 -- [0] magic 20240520, [1] version 1,
[2] token count, the rest zero -- followed by that many little-endian uint16 token ids. Readers check
magic, version and the exact file size; every failure names the file and what is wrong.
"""

from __future__ import annotations

import glob as _glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pgolf_core.atomic import atomic_write

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_VOCAB = 1 << 16


class ShardError(ValueError):
    """A shard file is malformed, or holds a token id outside the vocabulary."""


@dataclass(frozen=True)
class ShardHeader:
    path: Path
    num_tokens: int

    @property
    def nbytes(self) -> int:
        return HEADER_BYTES + 2 * self.num_tokens


def read_header(path: str | os.PathLike) -> ShardHeader:
    """Parse and check a shard's header against the file size, without reading its tokens."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ShardError(f"{path}: shard file not found") from None
    if size < HEADER_BYTES:
        raise ShardError(
            f"{path}: truncated header: file has {size} bytes, a shard header needs {HEADER_BYTES}"
        )
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, num_tokens = int(header[0]), int(header[1]), int(header[2])
    if magic != SHARD_MAGIC:
        raise ShardError(f"{path}: wrong magic {magic} (expected {SHARD_MAGIC}): not a challenge token shard")
    if version != SHARD_VERSION:
        raise ShardError(f"{path}: unsupported shard version {version} (expected {SHARD_VERSION})")
    if num_tokens < 0:
        raise ShardError(f"{path}: negative token count {num_tokens} in header")
    expected = HEADER_BYTES + 2 * num_tokens
    if size != expected:
        what = "truncated" if size < expected else "trailing bytes"
        raise ShardError(
            f"{path}: {what}: header says {num_tokens} tokens, so {expected} bytes, but the file has {size} "
            "bytes"
        )
    return ShardHeader(path, num_tokens)


def check_token_range(tokens: np.ndarray, vocab_size: int, source: str) -> None:
    """Raise ShardError naming ``source`` if any id is >= vocab_size (or negative)."""
    if tokens.size == 0:
        return
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        bad_at = int(np.flatnonzero((tokens < 0) | (tokens >= vocab_size))[0])
        raise ShardError(
            f"{source}: token id {int(tokens[bad_at])} at position {bad_at} is outside the vocabulary "
            f"[0, {vocab_size})"
        )


def read_shard(path: str | os.PathLike, vocab_size: int | None = None, mmap: bool = True) -> np.ndarray:
    """The tokens of one shard as a uint16 array (memory-mapped by default, read-only).

    With ``vocab_size`` every id is checked to be inside the vocabulary.
    """
    header = read_header(path)
    if mmap and header.num_tokens:
        tokens = np.memmap(
            header.path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(header.num_tokens,)
        )
    else:
        tokens = np.fromfile(header.path, dtype=TOKEN_DTYPE, count=header.num_tokens, offset=HEADER_BYTES)
    if vocab_size is not None:
        check_token_range(tokens, vocab_size, str(header.path))
    return tokens


def write_shard(
    path: str | os.PathLike, tokens: np.ndarray | Sequence[int], vocab_size: int | None = None
) -> Path:
    """Write ``tokens`` as a shard, atomically (temp file + rename). Ids must fit the vocabulary."""
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ShardError(f"{path}: tokens must be a 1-D sequence, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ShardError(f"{path}: tokens must be integers, got dtype {arr.dtype}")
    check_token_range(arr, vocab_size if vocab_size is not None else MAX_VOCAB, str(path))
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, arr.size)
    payload = arr.astype(TOKEN_DTYPE, copy=False)

    def write(f) -> None:
        f.write(header.tobytes())
        f.write(payload.tobytes())

    return atomic_write(path, write)


def list_shards(pattern: str | os.PathLike) -> list[Path]:
    """Sorted token shard paths matching a glob; a clear error when none match.

    ``fineweb_val_*.bin`` also matches the byte sidecars ``fineweb_val_bytes_*.bin`` of CaseOps data,
    which hold byte counts, not tokens: ``*_bytes_*`` files are left out unless the pattern's own file
    part asks for them.
    """
    wants_bytes = "_bytes_" in Path(pattern).name
    files = sorted(Path(p) for p in _glob.glob(str(pattern)) if wants_bytes or "_bytes_" not in Path(p).name)
    if not files:
        raise FileNotFoundError(f"no shards match {pattern!s}")
    return files


def load_tokens(files: Sequence[str | os.PathLike], vocab_size: int | None = None) -> np.ndarray:
    """All tokens of ``files`` concatenated in order (a copy in memory)."""
    parts = [np.asarray(read_shard(f, vocab_size)) for f in files]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=TOKEN_DTYPE)
