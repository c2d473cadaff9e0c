"""The official-data download, against a fake Hugging Face hub (no network in tests)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from pgolf_core.data.fetch import FetchError, fetch_official
from pgolf_core.data.shards import read_shard, write_shard
from pgolf_core.data.tokenizer import file_sha256


class FakeHub:
    """Serves files from a local folder laid out like the published dataset repo; counts calls."""

    def __init__(self, root: Path, repo_id: str = "willdepueoai/parameter-golf"):
        self.root, self.repo_id, self.calls = root, repo_id, []

    def __call__(self, *, repo_id, filename, subfolder, repo_type):
        assert repo_type == "dataset" and repo_id == self.repo_id
        self.calls.append(f"{subfolder}/{filename}")
        path = self.root / subfolder / filename
        if not path.is_file():
            from huggingface_hub.errors import EntryNotFoundError

            raise EntryNotFoundError(f"{subfolder}/{filename}")
        return str(path)


@pytest.fixture
def hub(tmp_path, smoke_dir):
    root = tmp_path / "hub"
    ds = root / "datasets" / "datasets" / "fineweb10B_sp1024"
    write_shard(ds / "fineweb_val_000000.bin", np.arange(100) % 1024)
    for i in range(3):
        write_shard(ds / f"fineweb_train_{i:06d}.bin", np.full(50 + i, i))
    tok = root / "datasets" / "tokenizers"
    tok.mkdir(parents=True)
    shutil.copy(smoke_dir / "tokenizer.model", tok / "fineweb_1024_bpe.model")
    shutil.copy(smoke_dir / "tokenizer.vocab", tok / "fineweb_1024_bpe.vocab")
    manifest = {
        "datasets": [
            {"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024", "stats": {"files_train": 3, "files_val": 1}},
        ],
        "tokenizers": [
            {"name": "sp_bpe_1024", "model_path": "tokenizers/fineweb_1024_bpe.model", "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"},
        ],
    }
    (root / "datasets" / "manifest.json").write_text(json.dumps(manifest))
    return FakeHub(root)


def test_fetch_downloads_val_first_train_shards_and_tokenizer(tmp_path, hub):
    out = tmp_path / "data"
    record = fetch_official("sp1024", 2, out_root=out, download=hub, progress=False)
    ds = out / "datasets" / "fineweb10B_sp1024"
    assert sorted(p.name for p in ds.glob("*.bin")) == ["fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin"]
    assert read_shard(ds / "fineweb_train_000001.bin").tolist() == [1] * 51
    assert (out / "tokenizers" / "fineweb_1024_bpe.model").is_file()
    assert record["tokens"] == {"val": 100, "train": 101}
    assert record["tokenizer"]["sha256"] == file_sha256(out / "tokenizers" / "fineweb_1024_bpe.model")
    assert json.loads((ds / "pgolf_fetch.json").read_text()) == record
    assert "datasets/datasets/fineweb10B_sp1024/fineweb_train_000002.bin" not in hub.calls


def test_fetch_is_resumable_and_replaces_damaged_shards(tmp_path, hub):
    out = tmp_path / "data"
    fetch_official("sp1024", 2, out_root=out, download=hub, progress=False)
    first = len(hub.calls)
    shard = out / "datasets" / "fineweb10B_sp1024" / "fineweb_train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])  # a download cut short
    fetch_official("sp1024", 2, out_root=out, download=hub, progress=False)
    assert hub.calls[first:] == ["datasets/datasets/fineweb10B_sp1024/fineweb_train_000000.bin"]
    assert read_shard(shard).tolist() == [0] * 50


def test_fetch_offline_fails_with_a_clear_message(tmp_path):
    def offline(**kwargs):
        raise LocalEntryNotFoundError("Name or service not known")

    with pytest.raises(FetchError, match=r"could not download datasets/manifest\.json from the Hugging Face dataset willdepueoai/parameter-golf: huggingface\.co is unreachable.*pgolf data smoke"):
        fetch_official("sp1024", 1, out_root=tmp_path, download=offline, progress=False)


def test_fetch_checks_counts_and_names(tmp_path, hub):
    with pytest.raises(FetchError, match="sp1024 has 3 train shards on willdepueoai/parameter-golf; asked for 9"):
        fetch_official("sp1024", 9, out_root=tmp_path / "a", download=hub, progress=False)
    with pytest.raises(FetchError, match=r"unknown variant 'sp4096'; choose one of \['sp1024', 'sp8192'\]"):
        fetch_official("sp4096", 1, out_root=tmp_path / "b", download=hub, progress=False)
    hub.repo_id = "kevclark/parameter-golf"
    with pytest.raises(FetchError, match=r"dataset 'fineweb10B_sp8192' is not in the manifest of kevclark/parameter-golf; it lists \['fineweb10B_sp1024'\]"):
        fetch_official("sp8192", 1, out_root=tmp_path / "c", download=hub, progress=False)
