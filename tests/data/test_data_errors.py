"""Bad data gives one clear line, never a traceback: invalid UTF-8 or a lone surrogate in the documents,
a failed export (no `.partial/` left), empty shards, and `pgolf data info` checking token ids and counts
against the manifest (including CaseOps sidecars)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pgolf_core.cli import main as cli_main
from pgolf_core.data.export import ExportError, export_documents, iter_jsonl_texts, staged_dir
from pgolf_core.data.loader import TokenStream, load_validation_tokens
from pgolf_core.data.shards import ShardError, read_shard, write_shard
from pgolf_core.data.verify import verify_dataset


def test_invalid_utf8_and_lone_surrogates_name_the_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xff"}\n')
    with pytest.raises(ExportError, match=r"docs\.jsonl:2: not valid UTF-8 \(byte 0xFF at character 14\)"):
        list(iter_jsonl_texts(path))
    path.write_bytes(b'{"text": "ab\\ud800c"}\n')  # a JSON escape of half a surrogate pair
    with pytest.raises(
        ExportError, match=r"docs\.jsonl:1: field 'text' holds a lone surrogate U\+D800 at character 3"
    ):
        list(iter_jsonl_texts(path))
    path.write_bytes(b'{"text": "\\ud83d\\ude00 ok"}\n')  # a whole pair is one valid character
    assert list(iter_jsonl_texts(path)) == ["\U0001f600 ok"]


def test_export_refuses_a_lone_surrogate_in_a_document(tmp_path, smoke_dir):
    with pytest.raises(ExportError, match=r"document 1 holds a lone surrogate U\+DC80 at character 2"):
        export_documents(
            ["ok", "a\udc80"], smoke_dir / "tokenizer.model", tmp_path / "x", val_docs=1, progress=False
        )


def test_a_failed_export_leaves_no_partial_folder_and_one_line(tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_bytes(
        b"".join(b'{"text": "line %d of text"}\n' % i for i in range(30)) + b'{"text": "\xc3("}\n'
    )
    out = tmp_path / "ds"
    assert (
        cli_main(
            [
                "data",
                "export",
                str(docs),
                "--out",
                str(out),
                "--val-docs",
                "3",
                "--vocab-size",
                "300",
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "docs.jsonl:31: not valid UTF-8 (byte 0xC3" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]


def test_staged_dir_cleans_its_own_partial_and_keeps_a_foreign_one(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError), staged_dir(out) as work:
        (work / "half.bin").write_text("x")
        raise RuntimeError("crash mid-build")
    assert not (tmp_path / "ds.partial").exists() and not out.exists()
    # A killed build leaves its marked folder: the next build replaces it.
    (tmp_path / "ds.partial").mkdir()
    (tmp_path / "ds.partial" / ".pgolf-partial").touch()
    (tmp_path / "ds.partial" / "half.bin").write_text("x")
    with staged_dir(out) as work:
        (work / "manifest.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    # A folder of that name that pgolf did not write is never deleted.
    foreign = tmp_path / "other.partial"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with (
        pytest.raises(ExportError, match="other.partial exists and was not left by a pgolf build"),
        staged_dir(tmp_path / "other"),
    ):
        pass
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_empty_shards_are_shard_errors_naming_the_files(tmp_path):
    empty = write_shard(tmp_path / "fineweb_train_000000.bin", [])
    with pytest.raises(
        ShardError, match=r"every shard is empty \(0 tokens in 1 file\(s\): .*fineweb_train_000000\.bin\)"
    ):
        TokenStream([empty])
    val = write_shard(tmp_path / "fineweb_val_000000.bin", [])
    with pytest.raises(
        ShardError,
        match=r"validation split \(0 tokens in 1 shard\(s\)\) is empty: .*fineweb_val_000000\.bin$",
    ):
        load_validation_tokens([val], seq_len=64)


@pytest.fixture
def copy_of(tmp_path):
    def copy(src):
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst

    return copy


def test_data_info_checks_ids_and_counts_against_the_manifest(smoke_dir, copy_of, capsys):
    assert cli_main(["data", "info", str(smoke_dir)]) == 0
    out = capsys.readouterr().out
    assert "ids < 1024 (manifest.json)" in out and "val: 1 shard(s)" in out

    ds = copy_of(smoke_dir)
    shard = ds / "fineweb_train_000002.bin"
    tokens = np.array(read_shard(shard))
    tokens[777] = 5000
    write_shard(shard, tokens)  # a valid header, one id outside the vocabulary
    assert cli_main(["data", "info", str(ds)]) == 2
    err = capsys.readouterr().err
    assert (
        "fineweb_train_000002.bin: token id 5000 at position 777 is outside the vocabulary [0, 1024)" in err
    )

    write_shard(shard, tokens[:-10] % 1024)  # ids fine, 10 tokens fewer than the manifest says
    with pytest.raises(
        ShardError,
        match=rf"fineweb_train_000002.bin: {tokens.size - 10:,} tokens, but .*manifest.json says "
        rf"{tokens.size:,}",
    ):
        verify_dataset(ds)
    write_shard(shard, tokens % 1024)
    write_shard(ds / "fineweb_train_000099.bin", [1, 2, 3])
    with pytest.raises(
        ShardError, match=r"train shards \['fineweb_train_000099.bin'\] are not listed in .*manifest.json"
    ):
        verify_dataset(ds)
    (ds / "fineweb_train_000099.bin").unlink()
    (ds / "fineweb_train_000000.bin").unlink()
    with pytest.raises(
        ShardError, match=r"lists train shards \['fineweb_train_000000.bin'\] that are not in"
    ):
        verify_dataset(ds)


def test_data_info_checks_the_caseops_sidecars(smoke_caseops_dir, copy_of, capsys):
    assert cli_main(["data", "info", str(smoke_caseops_dir)]) == 0
    out = capsys.readouterr().out
    assert (
        "val: 1 shard(s)" in out
        and "val byte sidecars: 1, each as long as its shard" in out
        and "CaseOps" in out
    )
    ds = copy_of(smoke_caseops_dir)
    side = ds / "fineweb_val_bytes_000000.bin"
    counts = np.array(read_shard(side))
    write_shard(side, counts[:-1])
    with pytest.raises(
        ShardError, match=rf"{counts.size - 1:,} byte entries, but fineweb_val_000000.bin has {counts.size:,}"
    ):
        verify_dataset(ds)
    counts[5] += 1
    write_shard(side, counts)
    want = json.loads((ds / "manifest.json").read_text())["splits"]["val"]["bytes"]
    with pytest.raises(
        ShardError, match=rf"sidecars sum to {want + 1:,} bytes, but .*manifest.json says {want:,}"
    ):
        verify_dataset(ds)
    side.unlink()
    with pytest.raises(ShardError, match="fineweb_val_bytes_000000.bin: shard file not found"):
        verify_dataset(ds)
