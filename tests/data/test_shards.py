"""The challenge's shard format: exact round trip and a clear error for every kind of damage."""

from __future__ import annotations

import numpy as np
import pytest

from pgolf_core.data.shards import (
    HEADER_BYTES,
    SHARD_MAGIC,
    ShardError,
    list_shards,
    load_tokens,
    read_header,
    read_shard,
    write_shard,
)


def test_round_trip_preserves_tokens_and_layout(tmp_path):
    """Header is [magic, version, n, 0...] little-endian int32, then n little-endian uint16."""
    tokens = np.array([1, 0, 65535, 17, 1023, 1], dtype=np.int64)
    path = write_shard(tmp_path / "fineweb_val_000000.bin", tokens)
    raw = path.read_bytes()
    assert len(raw) == HEADER_BYTES + 2 * tokens.size == 1036
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert header[:3].tolist() == [SHARD_MAGIC, 1, 6] and not header[3:].any()
    assert np.frombuffer(raw[HEADER_BYTES:], dtype="<u2").tolist() == tokens.tolist()
    assert read_shard(path).tolist() == tokens.tolist()
    assert read_shard(path, mmap=False).tolist() == tokens.tolist()
    assert read_header(path).num_tokens == 6


def test_empty_shard_round_trips(tmp_path):
    path = write_shard(tmp_path / "s.bin", [])
    assert path.stat().st_size == HEADER_BYTES
    assert read_shard(path).size == 0


def _write_raw(path, header_ints, n_payload):
    header = np.zeros(256, dtype="<i4")
    header[: len(header_ints)] = header_ints
    path.write_bytes(header.tobytes() + np.arange(n_payload, dtype="<u2").tobytes())
    return path


def test_truncated_header_names_file_and_sizes(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(ShardError, match=r"short\.bin: truncated header: file has 100 bytes.*needs 1024"):
        read_shard(path)


def test_wrong_magic_is_rejected(tmp_path):
    path = _write_raw(tmp_path / "bad.bin", [12345, 1, 4], 4)
    with pytest.raises(ShardError, match=r"bad\.bin: wrong magic 12345 \(expected 20240520\)"):
        read_shard(path)


def test_wrong_version_is_rejected(tmp_path):
    path = _write_raw(tmp_path / "v2.bin", [SHARD_MAGIC, 2, 4], 4)
    with pytest.raises(ShardError, match=r"v2\.bin: unsupported shard version 2 \(expected 1\)"):
        read_shard(path)


def test_truncated_payload_is_rejected(tmp_path):
    path = _write_raw(tmp_path / "cut.bin", [SHARD_MAGIC, 1, 10], 7)
    with pytest.raises(
        ShardError, match=r"cut\.bin: truncated: header says 10 tokens, so 1044 bytes, but the file has 1038"
    ):
        read_shard(path)


def test_trailing_bytes_are_rejected(tmp_path):
    path = _write_raw(tmp_path / "long.bin", [SHARD_MAGIC, 1, 3], 5)
    with pytest.raises(ShardError, match=r"long\.bin: trailing bytes"):
        read_header(path)


def test_missing_file_is_a_shard_error(tmp_path):
    with pytest.raises(ShardError, match="shard file not found"):
        read_header(tmp_path / "nope.bin")


def test_out_of_vocab_id_on_write_names_id_and_position(tmp_path):
    with pytest.raises(
        ShardError, match=r"token id 1024 at position 2 is outside the vocabulary \[0, 1024\)"
    ):
        write_shard(tmp_path / "x.bin", [1, 5, 1024, 3], vocab_size=1024)
    assert not list(tmp_path.iterdir()), "a rejected write leaves nothing behind"


def test_ids_beyond_uint16_or_negative_are_rejected(tmp_path):
    with pytest.raises(ShardError, match="token id 65536"):
        write_shard(tmp_path / "x.bin", [65536])
    with pytest.raises(ShardError, match="token id -1"):
        write_shard(tmp_path / "x.bin", [-1])


def test_out_of_vocab_id_on_read_with_vocab(tmp_path):
    path = write_shard(tmp_path / "fineweb_train_000000.bin", [1, 2, 900, 3])
    assert read_shard(path, vocab_size=1024).tolist() == [1, 2, 900, 3]
    with pytest.raises(
        ShardError,
        match=r"fineweb_train_000000\.bin: token id 900 at position 2 is outside the vocabulary \[0, 512\)",
    ):
        read_shard(path, vocab_size=512)


def test_write_is_atomic_no_temp_left_and_old_file_kept_on_failure(tmp_path):
    path = write_shard(tmp_path / "s.bin", [1, 2, 3])
    with pytest.raises(ShardError):
        write_shard(path, [1, 99999])
    assert read_shard(path).tolist() == [1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["s.bin"]


def test_list_and_load_tokens_in_sorted_order(tmp_path):
    write_shard(tmp_path / "fineweb_train_000001.bin", [4, 5])
    write_shard(tmp_path / "fineweb_train_000000.bin", [1, 2, 3])
    files = list_shards(tmp_path / "fineweb_train_*.bin")
    assert [f.name for f in files] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    assert load_tokens(files).tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(FileNotFoundError, match="no shards match"):
        list_shards(tmp_path / "fineweb_val_*.bin")
