"""CaseOps data: the tokenizer's markers, the validation byte sidecar (lengths, BOS, per-document sums,
equality with the plain denominator), its loader, and the T10 recount that catches transformed bytes."""

from __future__ import annotations

import numpy as np
import pytest

from pgolf_core.compliance import recount_bytes
from pgolf_core.data import caseops
from pgolf_core.data.export import export_documents, read_manifest
from pgolf_core.data.loader import load_validation_bytes, load_validation_tokens
from pgolf_core.data.shards import list_shards, load_tokens, read_header, read_shard, write_shard
from pgolf_core.data.sidecar import (
    SidecarError,
    build_sidecar_tables,
    literal_markers,
    recount_original_bytes,
    sidecar_bytes,
    sidecar_path,
    target_byte_counts,
    transformed_bytes,
)
from pgolf_core.data.smoke import SMOKE_VAL_DOCS, smoke_documents
from pgolf_core.data.tokenizer import (
    BOS_ID,
    TokenizerError,
    caseops_marker_ids,
    is_caseops_tokenizer,
    load_tokenizer,
    train_tokenizer,
)
from pgolf_core.data.tokenizer_bytes import build_byte_luts, stream_bytes

DOCS = [
    f"Document {i} of the NASA set. " + "The iPhone sat on McDonald's mat, and THEN it sat. " * (1 + i % 4)
    for i in range(40)
]


@pytest.fixture(scope="module")
def caseops_tokenizer(tmp_path_factory):
    return train_tokenizer(DOCS * 3, 320, tmp_path_factory.mktemp("tok") / "tok", caseops=True)


def test_the_markers_are_single_tokens_at_ids_4_to_7(caseops_tokenizer, smoke_dir):
    sp = load_tokenizer(caseops_tokenizer, caseops=True)
    assert caseops_marker_ids(sp) == (4, 5, 6, 7)
    for i, mark in enumerate(caseops.MARKERS, start=4):
        assert sp.id_to_piece(i) == mark and sp.encode(mark) == [i]
        assert sp.encode(f"ab{mark}cd").count(i) == 1
    assert [sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()] == [0, 1, 2, 3]
    assert sp.id_to_piece(8) == "<0x00>" and sp.is_byte(263)  # byte fallback after the markers
    assert sp.encode(caseops.encode("The NASA"))[:1] == [4]
    plain = load_tokenizer(smoke_dir / "tokenizer.model")
    assert not is_caseops_tokenizer(plain)
    with pytest.raises(TokenizerError, match="tokenizer.model: not a CaseOps tokenizer"):
        load_tokenizer(smoke_dir / "tokenizer.model", caseops=True)
    with pytest.raises(TokenizerError, match="a CaseOps tokenizer .* pass --caseops"):
        load_tokenizer(caseops_tokenizer, caseops=False)


def slow_literal(tokens, esc=7, others=(4, 5, 6)):
    out, pending = [], False
    for t in tokens:
        if pending:
            out.append(t in (*others, esc))
            pending = False
        else:
            out.append(False)
            pending = t == esc
    return out


def test_literal_marker_detection_pairs_escapes_left_to_right(caseops_tokenizer):
    tables = build_sidecar_tables(load_tokenizer(caseops_tokenizer))
    rng = np.random.default_rng(3)
    for _ in range(300):
        t = rng.choice([1, 4, 5, 6, 7, 7, 7, 50, 60], size=rng.integers(0, 30))
        assert literal_markers(t, tables).tolist() == slow_literal(t.tolist())


def test_escaped_marker_characters_count_their_three_bytes(tmp_path, caseops_tokenizer):
    docs = ["x\ue001y and \ue004\ue004Z", "plain \ue003 end", "The END"]
    m = export_documents(docs, caseops_tokenizer, tmp_path, val_docs=3, progress=False, caseops=True)
    side = read_shard(tmp_path / "fineweb_val_bytes_000000.bin")
    tokens = read_shard(tmp_path / "fineweb_val_000000.bin")
    assert side.size == tokens.size
    starts = np.flatnonzero(tokens == BOS_ID).tolist() + [tokens.size]
    for doc, a, b in zip(docs, starts[:-1], starts[1:], strict=True):
        assert int(side[a:b].sum()) == len(doc.encode("utf-8")), doc
    assert m["splits"]["val"]["bytes"] == sum(len(d.encode()) for d in docs)
    assert m["caseops"] is True and m["caseops_transform"]["marker_ids"] == [4, 5, 6, 7]
    assert m["splits"]["val"]["shards"][0]["bytes_file"] == "fineweb_val_bytes_000000.bin"


def test_sidecar_lines_up_with_every_shard_and_bos_counts_nothing(smoke_caseops_dir):
    m = read_manifest(smoke_caseops_dir)
    assert m["caseops"] is True
    for entry in m["splits"]["val"]["shards"]:
        tokens = read_shard(smoke_caseops_dir / entry["file"])
        side = read_shard(smoke_caseops_dir / entry["bytes_file"])
        assert (
            read_header(smoke_caseops_dir / entry["bytes_file"]).num_tokens == tokens.size == entry["tokens"]
        )
        assert (side[tokens == BOS_ID] == 0).all()
        markers = np.isin(tokens, [4, 5, 6, 7])
        assert markers.sum() > 1000 and (side[markers] == 0).all()  # the smoke text has no literal markers
    assert not list(smoke_caseops_dir.glob("fineweb_train_bytes_*"))  # training needs no sidecar


def test_sidecar_sum_per_document_is_its_normalized_utf8_length(smoke_caseops_dir):
    sp = load_tokenizer(smoke_caseops_dir / "tokenizer.model")
    tokens = load_tokens(list_shards(smoke_caseops_dir / "fineweb_val_*.bin"))
    side = load_tokens(list_shards(smoke_caseops_dir / "fineweb_val_bytes_*.bin")).astype(np.int64)
    starts = np.flatnonzero(tokens == BOS_ID).tolist() + [tokens.size]
    docs = smoke_documents()[:SMOKE_VAL_DOCS]
    assert len(starts) == len(docs) + 1
    checked = 0
    for doc, a, b in zip(docs, starts[:-1], starts[1:], strict=True):
        if doc != doc.strip():
            continue  # SentencePiece drops leading and trailing whitespace; those bytes are counted nowhere
        # The tokenizer's own normalization of the ORIGINAL text (NFKC, whitespace runs collapsed).
        normalized = sp.normalize(doc).replace("\u2581", " ")
        assert int(side[a:b].sum()) == len(normalized.encode("utf-8"))
        checked += 1
    assert checked > 50


def test_caseops_and_plain_denominators_are_equal_to_the_byte(smoke_dir, smoke_caseops_dir):
    plain_sp = load_tokenizer(smoke_dir / "tokenizer.model")
    plain = stream_bytes(load_tokens(list_shards(smoke_dir / "fineweb_val_*.bin")), build_byte_luts(plain_sp))
    side = load_tokens(list_shards(smoke_caseops_dir / "fineweb_val_bytes_*.bin"))
    assert (
        int(side[1:].sum(dtype=np.int64))
        == plain
        == read_manifest(smoke_caseops_dir)["splits"]["val"]["bytes"]
    )
    # The tokens differ (markers), the bytes do not; the same holds for training.
    assert (
        read_manifest(smoke_caseops_dir)["splits"]["val"]["tokens"]
        > read_manifest(smoke_dir)["splits"]["val"]["tokens"]
    )
    assert (
        read_manifest(smoke_caseops_dir)["splits"]["train"]["bytes"]
        == read_manifest(smoke_dir)["splits"]["train"]["bytes"]
    )


def test_t10_recount_matches_the_sidecar_and_exposes_transformed_bytes(smoke_caseops_dir):
    """#2138: counting the transformed text (markers as 3-byte characters) inflates the denominator; a
    plain decode recount agrees with that wrong number, the CaseOps recount with the sidecar."""
    sp = load_tokenizer(smoke_caseops_dir / "tokenizer.model")
    tokens = load_tokens(list_shards(smoke_caseops_dir / "fineweb_val_*.bin")).astype(np.int64)
    side = load_tokens(list_shards(smoke_caseops_dir / "fineweb_val_bytes_*.bin"))
    original = int(side[1:].sum(dtype=np.int64))
    wrong = transformed_bytes(tokens, build_byte_luts(sp))
    assert wrong - original == 3 * int(np.isin(tokens, [4, 5, 6, 7]).sum()) > 0.02 * original
    assert recount_bytes(tokens, sp) == wrong  # the plain T10 recount cannot tell
    assert recount_original_bytes(tokens, sp) == original
    # A window that starts inside a document: position 0 is context only.
    part = tokens[1000:9000]
    assert recount_original_bytes(part, sp) == int(side[1001:9000].sum(dtype=np.int64))


def test_validation_bytes_load_aligned_with_the_tokens(smoke_caseops_dir, tmp_path):
    files = list_shards(smoke_caseops_dir / "fineweb_val_*.bin")
    assert [f.name for f in files] == ["fineweb_val_000000.bin"]  # the sidecar is not a token shard
    for seq_len, cap in ((64, 0), (1024, 0), (128, 5000)):
        tokens = load_validation_tokens(files, seq_len, cap)
        nbytes = load_validation_bytes(files, seq_len, cap)
        assert nbytes.shape == tokens.shape and nbytes.dtype == np.uint16
    sp = load_tokenizer(smoke_caseops_dir / "tokenizer.model")
    tokens = load_validation_tokens(files, 128, 5000)
    nbytes = load_validation_bytes(files, 128, 5000)
    assert (nbytes == sidecar_bytes(tokens, build_sidecar_tables(sp))).all()
    assert target_byte_counts(nbytes, 1, 129).sum() == nbytes[1:129].sum()
    with pytest.raises(ValueError, match="must satisfy 1 <= start"):
        target_byte_counts(nbytes, 0, 10)
    # A missing or misaligned sidecar is an error that names the file.
    lone = write_shard(tmp_path / "fineweb_val_000000.bin", tokens)
    with pytest.raises(
        SidecarError, match="fineweb_val_bytes_000000.bin: byte sidecar of fineweb_val_000000.bin not found"
    ):
        load_validation_bytes([lone], 128)
    write_shard(sidecar_path(lone), nbytes[:-1])
    with pytest.raises(
        SidecarError,
        match=f"{nbytes.size - 1:,} byte entries, but fineweb_val_000000.bin has {nbytes.size:,}",
    ):
        load_validation_bytes([lone], 128)
