"""Export of documents to shards, the manifest, and the embedded smoke corpus."""

from __future__ import annotations

import json

import pytest

from pgolf_core.data.export import (
    ExportError,
    describe_manifest,
    export_documents,
    iter_jsonl_texts,
    read_manifest,
    staged_dir,
)
from pgolf_core.data.shards import list_shards, load_tokens, read_shard
from pgolf_core.data.smoke import build_smoke_dataset, smoke_documents
from pgolf_core.data.tokenizer import BOS_ID, file_sha256, load_tokenizer, train_tokenizer
from pgolf_core.data.tokenizer_bytes import build_byte_luts, stream_bytes

DOCS = [
    f"Document number {i}. " + "The cat sat on the mat, and then it sat again. " * (1 + i % 5)
    for i in range(40)
]


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    return train_tokenizer(DOCS * 5, 300, tmp_path_factory.mktemp("tok") / "tok")


def test_export_writes_bos_prefixed_docs_val_first_in_separate_shards(tmp_path, tiny_tokenizer):
    sp = load_tokenizer(tiny_tokenizer)
    m = export_documents(DOCS, tiny_tokenizer, tmp_path, val_docs=7, shard_tokens=500, progress=False)
    val = load_tokens(list_shards(tmp_path / "fineweb_val_*.bin"))
    train = load_tokens(list_shards(tmp_path / "fineweb_train_*.bin"))
    expected = [[BOS_ID, *ids] for ids in sp.encode(DOCS)]
    assert val.tolist() == sum(expected[:7], [])
    assert train.tolist() == sum(expected[7:], [])
    # val is flushed before train: its last shard may be short, and no shard mixes the two splits
    assert m["splits"]["val"]["documents"] == 7 and m["splits"]["train"]["documents"] == 33
    assert [s["tokens"] for s in m["splits"]["train"]["shards"]][:-1] == [500] * (
        len(m["splits"]["train"]["shards"]) - 1
    )
    assert sum(s["tokens"] for s in m["splits"]["val"]["shards"]) == val.size == m["splits"]["val"]["tokens"]
    assert (val == BOS_ID).sum() == 7 and (train == BOS_ID).sum() == 33
    luts = build_byte_luts(sp)
    assert m["splits"]["val"]["bytes"] == stream_bytes(val, luts)
    assert m["tokenizer"]["sha256"] == file_sha256(tiny_tokenizer)
    assert json.loads((tmp_path / "manifest.json").read_text()) == m


def test_export_hashes_the_corpus_in_order(tmp_path, tiny_tokenizer):
    a = export_documents(DOCS, tiny_tokenizer, tmp_path / "a", val_docs=2, progress=False)
    b = export_documents(DOCS, tiny_tokenizer, tmp_path / "b", val_docs=2, progress=False)
    c = export_documents(DOCS[::-1], tiny_tokenizer, tmp_path / "c", val_docs=2, progress=False)
    assert a["corpus"]["sha256"] == b["corpus"]["sha256"] != c["corpus"]["sha256"]


def test_export_rejects_bad_input(tmp_path, tiny_tokenizer):
    with pytest.raises(ExportError, match="asked for 50 validation documents but the corpus has only 40"):
        export_documents(DOCS, tiny_tokenizer, tmp_path / "x", val_docs=50, progress=False)
    with pytest.raises(ExportError, match="documents must be strings, got int"):
        export_documents(["ok", 3], tiny_tokenizer, tmp_path / "y", val_docs=0, progress=False)


def test_jsonl_reader_names_file_and_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b", "id": 2}\n')
    assert list(iter_jsonl_texts(path)) == ["a", "b"]
    path.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(ExportError, match=r"docs\.jsonl:2: no 'text' field \(found \['body'\]\)"):
        list(iter_jsonl_texts(path))
    path.write_text('{"text": 5}\n')
    with pytest.raises(ExportError, match=r"docs\.jsonl:1: field 'text' is int, expected a string"):
        list(iter_jsonl_texts(path))
    path.write_text("{oops\n")
    with pytest.raises(ExportError, match=r"docs\.jsonl:1: not valid JSON"):
        list(iter_jsonl_texts(path))


def test_tokenizer_training_uses_the_challenge_settings_and_is_deterministic(tmp_path):
    a = train_tokenizer(DOCS, 300, tmp_path / "a")
    b = train_tokenizer(DOCS, 300, tmp_path / "b")
    assert file_sha256(a) == file_sha256(b)
    sp = load_tokenizer(a)
    assert [sp.id_to_piece(i) for i in range(5)] == ["<pad>", "<s>", "</s>", "<unk>", "<0x00>"]
    assert sum(sp.is_byte(i) for i in range(sp.vocab_size())) == 256  # byte fallback
    assert sp.encode("2024") == [sp.piece_to_id(c) for c in "2024"]  # split digits
    assert not sp.id_to_piece(sp.encode("Hello")[0]).startswith("\u2581")  # no dummy prefix
    assert (tmp_path / "a.vocab").read_text().splitlines()[1] == "<s>\t0"


def test_staged_dir_keeps_old_dataset_when_the_build_fails(tmp_path):
    out = tmp_path / "ds"
    with staged_dir(out) as work:
        (work / "manifest.json").write_text("{}")
    with pytest.raises(ExportError, match="already exists; pass --force"):
        with staged_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with staged_dir(out, overwrite=True) as work:
            (work / "half").write_text("x")
            raise RuntimeError("crash mid-build")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


def test_smoke_dataset_numbers_and_summary(smoke_dir, smoke_manifest):
    m = smoke_manifest
    assert m["corpus"]["name"] == "smoke" and m["tokenizer"]["vocab_size"] == 1024
    assert m["corpus"]["documents"] == len(smoke_documents()) > 500
    val, train = m["splits"]["val"], m["splits"]["train"]
    assert val["documents"] == 64 and val["tokens"] > 50_000 and train["tokens"] > 500_000
    assert 2.0 < val["bytes_per_token"] < 3.0  # sp1024 on FineWeb gives about 2.44
    assert 3.0 < m["unigram_bpb"] < 4.5
    for name in ("val", "train"):
        files = list_shards(smoke_dir / f"fineweb_{name}_*.bin")
        assert [f.name for f in files] == [s["file"] for s in m["splits"][name]["shards"]]
        assert sum(read_shard(f, vocab_size=1024).size for f in files) == m["splits"][name]["tokens"]
    text = describe_manifest(m)
    assert "val" in text and f"{val['tokens']:,}" in text and "bytes/token" in text


def test_smoke_dataset_is_deterministic(smoke_manifest, tmp_path):
    again = build_smoke_dataset(tmp_path / "again", progress=False)
    for key in ("corpus", "tokenizer"):
        assert again[key]["sha256"] == smoke_manifest[key]["sha256"]
    assert again["splits"] == smoke_manifest["splits"]


def test_smoke_tokenizer_never_saw_validation_text(smoke_dir):
    """Trained on training documents only: its vocab is a function of those alone."""
    docs = smoke_documents()
    retrained = train_tokenizer(docs[64:], 1024, smoke_dir.parent / "retrained")
    assert file_sha256(retrained) == file_sha256(smoke_dir / "tokenizer.model")


def test_read_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="manifest format 'other'"):
        read_manifest(tmp_path)


def test_ensure_data_builds_the_smoke_corpus_once_and_refuses_missing_local_data(tmp_path):
    from pgolf_core.config import DataConfig
    from pgolf_core.data.prepare import ensure_data

    dc = DataConfig(source="smoke", root=str(tmp_path / "smoke"))
    assert ensure_data(dc, progress=False) == tmp_path / "smoke"
    first = (tmp_path / "smoke" / "manifest.json").stat().st_mtime_ns
    ensure_data(dc, progress=False)  # present: nothing rebuilt
    assert (tmp_path / "smoke" / "manifest.json").stat().st_mtime_ns == first
    local = DataConfig(source="local", root=str(tmp_path / "none"), tokenizer=str(tmp_path / "t.model"))
    with pytest.raises(FileNotFoundError, match="no shards matching fineweb_val_"):
        ensure_data(local, progress=False)
