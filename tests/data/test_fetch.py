"""The official-data download, against a fake Hugging Face hub (no network in tests)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
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
            {
                "name": "fineweb10B_sp1024",
                "tokenizer_name": "sp_bpe_1024",
                "stats": {"files_train": 3, "files_val": 1},
            },
        ],
        "tokenizers": [
            {
                "name": "sp_bpe_1024",
                "model_path": "tokenizers/fineweb_1024_bpe.model",
                "vocab_path": "tokenizers/fineweb_1024_bpe.vocab",
            },
        ],
    }
    (root / "datasets" / "manifest.json").write_text(json.dumps(manifest))
    return FakeHub(root)


def test_fetch_downloads_val_first_train_shards_and_tokenizer(tmp_path, hub):
    out = tmp_path / "data"
    record = fetch_official("sp1024", 2, out_root=out, download=hub, progress=False)
    ds = out / "datasets" / "fineweb10B_sp1024"
    assert sorted(p.name for p in ds.glob("*.bin")) == [
        "fineweb_train_000000.bin",
        "fineweb_train_000001.bin",
        "fineweb_val_000000.bin",
    ]
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

    with pytest.raises(
        FetchError,
        match=r"could not download datasets/manifest\.json from the Hugging Face dataset "
        r"willdepueoai/parameter-golf: huggingface\.co is unreachable.*pgolf data smoke",
    ):
        fetch_official("sp1024", 1, out_root=tmp_path, download=offline, progress=False)


def test_fetch_checks_counts_and_names(tmp_path, hub):
    with pytest.raises(
        FetchError, match="sp1024 has 3 train shards on willdepueoai/parameter-golf; asked for 9"
    ):
        fetch_official("sp1024", 9, out_root=tmp_path / "a", download=hub, progress=False)
    choices = r"\['sp1024', 'sp8192', 'sp8192_caseops'\]"
    with pytest.raises(FetchError, match=rf"unknown variant 'sp4096'; choose one of {choices}"):
        fetch_official("sp4096", 1, out_root=tmp_path / "b", download=hub, progress=False)
    hub.repo_id = "kevclark/parameter-golf"
    with pytest.raises(
        FetchError,
        match=r"dataset 'fineweb10B_sp8192' is not in the manifest of kevclark/parameter-golf; it "
        r"lists \['fineweb10B_sp1024'\]",
    ):
        fetch_official("sp8192", 1, out_root=tmp_path / "c", download=hub, progress=False)


# --------------------------------------------------------------------------------------------------
# sp8192_caseops: the canonical CaseOps export and its checks
# --------------------------------------------------------------------------------------------------

CASEOPS_REPO = "romeerp/parameter-golf-caseops-v1"
CASEOPS_REMOTE = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"


@pytest.fixture
def caseops_hub(tmp_path, smoke_caseops_dir, monkeypatch):
    """A hub laid out like the CaseOps export, small: 2 train shards, 3 validation documents in 12 tokens.
    The variant's expected counts are shrunk to match (the real ones are checked separately)."""
    from pgolf_core.data import fetch

    root = tmp_path / "caseops_hub"
    ds = root / "datasets" / "datasets" / CASEOPS_REMOTE
    val = np.array([1, 4, 300, 301, 1, 302, 5, 303, 1, 304, 305, 306])
    write_shard(ds / "fineweb_val_000000.bin", val)
    write_shard(ds / "fineweb_val_bytes_000000.bin", np.where(np.isin(val, [1, 4, 5]), 0, 3))
    for i in range(2):
        write_shard(ds / f"fineweb_train_{i:06d}.bin", np.full(40, 300 + i))
    tok = root / "datasets" / "tokenizers"
    tok.mkdir(parents=True)
    shutil.copy(smoke_caseops_dir / "tokenizer.model", tok / fetch.CASEOPS_TOKENIZER_FILE)
    manifest = {
        "datasets": [
            {
                "name": CASEOPS_REMOTE,
                "tokenizer_name": "sp_caseops",
                "stats": {"files_train": 2, "files_val": 1, "docs_val": 3},
            },
        ],
        "tokenizers": [{"name": "sp_caseops", "model_path": f"tokenizers/{fetch.CASEOPS_TOKENIZER_FILE}"}],
    }
    (root / "datasets" / "manifest.json").write_text(json.dumps(manifest))
    small = fetch.Expected(train_shards=2, val_docs=3, val_tokens=12)
    spec = replace(fetch.OFFICIAL_VARIANTS["sp8192_caseops"], expected=small)
    monkeypatch.setitem(fetch.OFFICIAL_VARIANTS, "sp8192_caseops", spec)
    return FakeHub(root, CASEOPS_REPO), manifest, root


def test_the_caseops_variant_expects_the_canonical_counts():
    from pgolf_core.data import fetch

    spec = fetch.OFFICIAL_VARIANTS["sp8192_caseops"]
    assert (spec.repo_id, spec.dataset, spec.local_dataset, spec.caseops) == (
        CASEOPS_REPO,
        CASEOPS_REMOTE,
        "fineweb10B_sp8192_caseops",
        True,
    )
    assert spec.expected == fetch.Expected(train_shards=80, val_docs=50_000, val_tokens=47_853_344)
    # 47,853,343 targets with the tail; 47,851,520 of them in whole 2048-token windows.
    assert ((spec.expected.val_tokens - 1) // 2048) * 2048 == fetch.CASEOPS_WINDOWED_TARGETS == 47_851_520


def test_fetch_caseops_downloads_the_sidecar_and_checks_the_counts(tmp_path, caseops_hub):
    hub, _, _ = caseops_hub
    out = tmp_path / "data"
    record = fetch_official("sp8192_caseops", 2, out_root=out, download=hub, progress=False)
    ds = out / "datasets" / "fineweb10B_sp8192_caseops"
    assert sorted(p.name for p in ds.glob("*.bin")) == [
        "fineweb_train_000000.bin",
        "fineweb_train_000001.bin",
        "fineweb_val_000000.bin",
        "fineweb_val_bytes_000000.bin",
    ]
    assert record["caseops"] is True and record["val_docs"] == 3
    assert record["val_sidecar_bytes"] == 7 * 3  # 7 of the 12 tokens are neither BOS nor a marker
    assert record["tokens"] == {"val": 12, "train": 80}
    assert (out / "tokenizers" / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model").is_file()


def _rewrite(root, manifest):
    (root / "datasets" / "manifest.json").write_text(json.dumps(manifest))


def test_fetch_caseops_refuses_the_leaky_and_the_truncated_exports(tmp_path, caseops_hub):
    hub, manifest, root = caseops_hub
    manifest["datasets"][0]["stats"]["files_train"] = 1499
    _rewrite(root, manifest)
    leak = r"lists 1,499 train shards: the fingerprint of the leaky CaseOps export .*#2127"
    with pytest.raises(FetchError, match=leak):
        fetch_official("sp8192_caseops", 2, out_root=tmp_path / "a", download=hub, progress=False)
    assert hub.calls == ["datasets/manifest.json"]  # refused before downloading any shard

    manifest["datasets"][0]["stats"].update(files_train=2, docs_val=10_000)
    _rewrite(root, manifest)
    with pytest.raises(FetchError, match="lists 10,000 validation documents, expected 3"):
        fetch_official("sp8192_caseops", 2, out_root=tmp_path / "b", download=hub, progress=False)

    manifest["datasets"][0]["stats"]["docs_val"] = 3
    _rewrite(root, manifest)
    ds = root / "datasets" / "datasets" / CASEOPS_REMOTE
    write_shard(ds / "fineweb_val_000000.bin", [1, 4, 300, 301, 1, 302])  # cut short
    short = r"hold 6 tokens \(5 targets\), expected 12 \(11 targets; 47,851,520 in whole"
    with pytest.raises(FetchError, match=short):
        fetch_official("sp8192_caseops", 2, out_root=tmp_path / "c", download=hub, progress=False)

    two_docs = [1, 4, 300, 301, 7, 302, 5, 303, 1, 304, 305, 306]
    write_shard(ds / "fineweb_val_000000.bin", two_docs)
    with pytest.raises(FetchError, match=r"hold 2 documents \(BOS tokens\), expected 3"):
        fetch_official("sp8192_caseops", 2, out_root=tmp_path / "d", download=hub, progress=False)


def test_fetch_caseops_needs_the_sidecar_and_a_caseops_tokenizer(tmp_path, caseops_hub, smoke_dir):
    from pgolf_core.data.fetch import CASEOPS_TOKENIZER_FILE

    hub, _, root = caseops_hub
    ds = root / "datasets" / "datasets" / CASEOPS_REMOTE
    side = ds / "fineweb_val_bytes_000000.bin"
    write_shard(side, np.zeros(11, dtype=np.int64))
    with pytest.raises(FetchError, match=r"fineweb_val_bytes_000000.bin: 11 byte entries for 12 tokens"):
        fetch_official("sp8192_caseops", 1, out_root=tmp_path / "a", download=hub, progress=False)
    side.unlink()
    missing = r"fineweb_val_bytes_000000\.bin from the Hugging Face dataset .*: no such file"
    with pytest.raises(FetchError, match=missing):
        fetch_official("sp8192_caseops", 1, out_root=tmp_path / "b", download=hub, progress=False)
    write_shard(side, np.zeros(12, dtype=np.int64))
    shutil.copy(smoke_dir / "tokenizer.model", root / "datasets" / "tokenizers" / CASEOPS_TOKENIZER_FILE)
    with pytest.raises(FetchError, match="sp8192_caseops: .*: not a CaseOps tokenizer"):
        fetch_official("sp8192_caseops", 1, out_root=tmp_path / "c", download=hub, progress=False)


def test_fetch_caseops_offline_says_so(tmp_path):
    def offline(**kwargs):
        raise LocalEntryNotFoundError("Name or service not known")

    says = r"from the Hugging Face dataset romeerp/parameter-golf-caseops-v1: huggingface\.co is unreachable"
    with pytest.raises(FetchError, match=says + ".*pgolf data smoke"):
        fetch_official("sp8192_caseops", 80, out_root=tmp_path, download=offline, progress=False)
