"""`pgolf data export --caseops` and `pgolf data smoke --caseops`."""

from __future__ import annotations

import json
import shutil

import numpy as np

from pgolf_core.cli import main as cli_main
from pgolf_core.data.shards import read_shard
from pgolf_core.data.tokenizer import is_caseops_tokenizer, load_tokenizer


def test_data_export_caseops_writes_transformed_shards_and_the_sidecar(tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    texts = [f"Line {i}: The QUICK brown Fox jumps over the lazy DOG in NYC." for i in range(60)]
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "ds"
    args = [
        "data",
        "export",
        str(docs),
        "--out",
        str(out),
        "--val-docs",
        "5",
        "--vocab-size",
        "320",
        "--quiet",
    ]
    assert cli_main([*args, "--caseops"]) == 0
    assert "CaseOps" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["caseops"] is True
    assert is_caseops_tokenizer(load_tokenizer(out / "tokenizer.model"))
    side = read_shard(out / "fineweb_val_bytes_000000.bin")
    tokens = read_shard(out / "fineweb_val_000000.bin")
    assert side.size == tokens.size and int(side.sum()) == sum(len(t.encode()) for t in texts[:5])
    # Per line: TITLE line, TITLE the, ALLCAPS quick, TITLE fox, ALLCAPS dog, ALLCAPS nyc.
    assert np.isin(tokens, [4, 5]).sum() == 5 * 6
    # The same documents without --caseops: the same bytes, fewer tokens, no sidecar.
    assert cli_main([*args[:4], str(tmp_path / "plain"), *args[5:]]) == 0
    plain = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert plain["caseops"] is False and not list((tmp_path / "plain").glob("*_bytes_*"))
    assert plain["splits"]["val"]["bytes"] == manifest["splits"]["val"]["bytes"]


def test_data_smoke_caseops_uses_its_own_folder(tmp_path, smoke_caseops_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(smoke_caseops_dir, tmp_path / "data" / "smoke_caseops")
    assert cli_main(["data", "smoke", "--caseops"]) == 0  # present: reported, not rebuilt
    out = capsys.readouterr().out
    assert "data/smoke_caseops already built" in out and "CaseOps" in out
    assert not (tmp_path / "data" / "smoke").exists()
