"""Download the challenge's published FineWeb shards and tokenizer (for pods), manifest-driven.

Layout on the Hub (a dataset repo): ``<root>/manifest.json`` lists the datasets (name, tokenizer_name,
stats.files_train / files_val) and the tokenizers (name, model_path, vocab_path); shards live in
``<root>/datasets/<dataset>/fineweb_{val,train}_%06d.bin`` and tokenizers under ``<root>/tokenizers/``.
sp1024 is published by the challenge (``willdepueoai/parameter-golf``); sp8192, used from PR #1394 on,
by ``kevclark/parameter-golf`` with the same layout. ``sp8192_caseops`` is the canonical
CaseOps export of PR #1729 (``romeerp/parameter-golf-caseops-v1``, same layout): case-transformed tokens,
one validation shard with its byte sidecar ``fineweb_val_bytes_000000.bin``, and a CaseOps tokenizer.
Its counts are checked, because wrong CaseOps data has produced wrong records: 80 training shards (a
local export with the prep script's old ``--val-docs 10000`` default had 1,499 and trained on 80% of the
validation documents, #2127), 50,000 validation documents, and 47,853,344 validation tokens, i.e.
47,853,343 targets, 47,851,520 of them in whole 2048-token windows (a truncated shard gave 9,662,464, #1923).

Locally the files land where the challenge's scripts put them: ``data/datasets/<dataset>/`` (for
sp8192_caseops ``data/datasets/fineweb10B_sp8192_caseops/``) and ``data/tokenizers/``. Downloads are
resumable (a present file with a valid header is kept), each shard is header-checked, and
``pgolf_fetch.json`` records what came from where.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pgolf_core.atomic import atomic_write, atomic_write_json
from pgolf_core.challenge import VAL_DOCS
from pgolf_core.data.overlap import LEAKY_TRAIN_SHARDS
from pgolf_core.data.shards import ShardError, read_header, read_shard
from pgolf_core.data.sidecar import sidecar_path
from pgolf_core.data.tokenizer import BOS_ID, TokenizerError, file_sha256, load_tokenizer

REMOTE_ROOT = "datasets"


@dataclass(frozen=True)
class Expected:
    """Counts a download must have (checked before and after downloading)."""

    train_shards: int
    val_docs: int
    val_tokens: int


@dataclass(frozen=True)
class Variant:
    repo_id: str
    dataset: str
    local: str | None = None  # folder under data/datasets/ (default: the remote dataset name)
    caseops: bool = False  # case-transformed tokens, a CaseOps tokenizer, validation byte sidecars
    expected: Expected | None = None

    @property
    def local_dataset(self) -> str:
        return self.local or self.dataset


CASEOPS_TOKENIZER_FILE = "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
CASEOPS_EXPECTED = Expected(train_shards=80, val_docs=VAL_DOCS, val_tokens=47_853_344)
CASEOPS_WINDOWED_TARGETS = 47_851_520  # the targets in whole 2048-token windows, as older loaders score

OFFICIAL_VARIANTS = {
    "sp1024": Variant("willdepueoai/parameter-golf", "fineweb10B_sp1024"),
    "sp8192": Variant("kevclark/parameter-golf", "fineweb10B_sp8192"),
    "sp8192_caseops": Variant(
        "romeerp/parameter-golf-caseops-v1",
        "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved",
        local="fineweb10B_sp8192_caseops",
        caseops=True,
        expected=CASEOPS_EXPECTED,
    ),
}


class FetchError(RuntimeError):
    """A download could not be done; the message says what, from where, and what to do."""


Downloader = Callable[..., str]


def _hub_download() -> Downloader:
    from huggingface_hub import hf_hub_download

    return hf_hub_download


def _explain(exc: Exception, repo_id: str, remote: str) -> FetchError:
    from huggingface_hub import errors as hf_errors

    where = f"{remote} from the Hugging Face dataset {repo_id}"
    if isinstance(exc, hf_errors.GatedRepoError):
        return FetchError(f"could not download {where}: the repository is gated; run `hf auth login` first")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return FetchError(f"could not download {where}: repository not found (check --repo-id)")
    if isinstance(exc, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled, ConnectionError)):
        return FetchError(
            f"could not download {where}: huggingface.co is unreachable and the file is not cached "
            f"({exc.__class__.__name__}). "
            "`pgolf data fetch` needs network access; offline, use `pgolf data smoke` for the embedded "
            "corpus, "
            "or copy the shards into data/datasets/ and the tokenizer into data/tokenizers/."
        )
    if isinstance(exc, hf_errors.EntryNotFoundError):
        return FetchError(f"could not download {where}: no such file in the repository")
    return FetchError(f"could not download {where}: {exc.__class__.__name__}: {exc}")


class _Client:
    def __init__(self, repo_id: str, remote_root: str, download: Downloader | None):
        self.repo_id, self.remote_root = repo_id, remote_root.strip("/")
        self.download = download or _hub_download()

    def get(self, remote: str, dest: Path, check_shard: bool = False) -> Path:
        """Fetch ``<root>/<remote>`` to ``dest`` unless a valid copy is already there."""
        if dest.is_file():
            if not check_shard:
                return dest
            try:
                read_header(dest)
                return dest
            except ShardError:
                dest.unlink()  # a damaged earlier download: fetch again
        full = f"{self.remote_root}/{remote}" if self.remote_root else remote
        sub, name = os.path.split(full)
        try:
            cached = Path(
                self.download(repo_id=self.repo_id, filename=name, subfolder=sub or None, repo_type="dataset")
            )
        except Exception as e:
            raise _explain(e, self.repo_id, full) from e
        src = cached.resolve(strict=True)
        with open(src, "rb") as f:
            atomic_write(dest, lambda out: shutil.copyfileobj(f, out, 1 << 24))
        if check_shard:
            read_header(dest)
        return dest


def _entry(items: list[dict], name: str, what: str, repo_id: str) -> dict:
    for item in items:
        if item.get("name") == name:
            return item
    names = [i.get("name") for i in items]
    raise FetchError(f"{what} {name!r} is not in the manifest of {repo_id}; it lists {names}")


def fetch_official(
    variant: str,
    train_shards: int,
    *,
    out_root: str | os.PathLike = "data",
    repo_id: str | None = None,
    remote_root: str = REMOTE_ROOT,
    download: Downloader | None = None,
    progress: bool = True,
) -> dict:
    """Download all validation shards, the first ``train_shards`` train shards and the tokenizer."""
    if variant not in OFFICIAL_VARIANTS:
        raise FetchError(f"unknown variant {variant!r}; choose one of {sorted(OFFICIAL_VARIANTS)}")
    if train_shards < 0:
        raise FetchError(f"--train-shards must be >= 0, got {train_shards}")
    spec = OFFICIAL_VARIANTS[variant]
    repo_id = repo_id or spec.repo_id
    out_root = Path(out_root)
    client = _Client(repo_id, remote_root, download)

    manifest_path = client.get("manifest.json", out_root / "manifest.json")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        manifest_path.unlink()
        raise FetchError(f"{manifest_path}: the downloaded manifest is not valid JSON ({e.msg})") from None
    dataset = _entry(manifest.get("datasets", []), spec.dataset, "dataset", repo_id)
    stats = dataset.get("stats") or {}
    n_train, n_val = int(stats.get("files_train", 0)), int(stats.get("files_val", 0))
    if spec.expected is not None:
        _check_published_counts(variant, repo_id, stats, spec.expected)
    if train_shards > n_train:
        raise FetchError(f"{variant} has {n_train} train shards on {repo_id}; asked for {train_shards}")
    tokenizer = _entry(manifest.get("tokenizers", []), dataset.get("tokenizer_name"), "tokenizer", repo_id)

    data_dir = out_root / "datasets" / spec.local_dataset
    remote_dir = f"datasets/{spec.dataset}"
    jobs = [
        (f"{remote_dir}/fineweb_val_{i:06d}.bin", data_dir / f"fineweb_val_{i:06d}.bin", True)
        for i in range(n_val)
    ]
    if spec.caseops:
        jobs += [(f"{remote_dir}/{sidecar_path(d).name}", sidecar_path(d), True) for _, d, _ in list(jobs)]
    jobs += [
        (f"{remote_dir}/fineweb_train_{i:06d}.bin", data_dir / f"fineweb_train_{i:06d}.bin", True)
        for i in range(train_shards)
    ]
    tok_files = [tokenizer[k] for k in ("model_path", "vocab_path") if tokenizer.get(k)]
    if not any(str(f).endswith(".model") for f in tok_files):
        raise FetchError(
            f"tokenizer entry {tokenizer.get('name')!r} in {repo_id}'s manifest has no .model file"
        )
    jobs += [(f, out_root / "tokenizers" / Path(f).name, False) for f in tok_files]

    for remote, dest, is_shard in tqdm(jobs, desc=f"fetch {variant}", unit="file", disable=not progress):
        client.get(remote, dest, check_shard=is_shard)

    model_file = next(out_root / "tokenizers" / Path(f).name for f in tok_files if str(f).endswith(".model"))
    val_files = [d for _, d, s in jobs if s and d.name.startswith("fineweb_val_") and "_bytes_" not in d.name]
    record = {
        "variant": variant,
        "repo_id": repo_id,
        "remote_root": remote_root,
        "dataset": spec.dataset,
        "val_shards": n_val,
        "train_shards": train_shards,
        "tokens": {
            "val": sum(read_header(d).num_tokens for d in val_files),
            "train": sum(read_header(d).num_tokens for _, d, s in jobs if s and "_train_" in d.name),
        },
        "tokenizer": {"file": str(model_file), "sha256": file_sha256(model_file)},
        "caseops": spec.caseops,
    }
    if spec.caseops:
        record.update(_check_caseops_download(variant, val_files, model_file, spec.expected))
    atomic_write_json(data_dir / "pgolf_fetch.json", record)
    return record


def _check_published_counts(variant: str, repo_id: str, stats: dict, expected: Expected) -> None:
    """The hub manifest's own counts, before anything is downloaded."""
    n_train = int(stats.get("files_train", 0))
    if n_train == LEAKY_TRAIN_SHARDS:
        raise FetchError(
            f"{variant} on {repo_id} lists {n_train:,} train shards: the fingerprint of the leaky CaseOps "
            "export (validation documents 10,000-49,999 exported into training by the --val-docs 10000 "
            "default, #2127); "
            f"the canonical export has {expected.train_shards}"
        )
    if n_train != expected.train_shards:
        raise FetchError(
            f"{variant} on {repo_id} lists {n_train} train shards, expected {expected.train_shards}"
        )
    docs_val = stats.get("docs_val")
    if docs_val is not None and int(docs_val) != expected.val_docs:
        raise FetchError(
            f"{variant} on {repo_id} lists {int(docs_val):,} validation documents, "
            f"expected {expected.val_docs:,}"
        )


def _check_caseops_download(
    variant: str, val_files: list[Path], model_file: Path, expected: Expected
) -> dict:
    """Validation token and document counts, the sidecars' lengths and the tokenizer of a CaseOps download."""
    n_tokens = sum(read_header(f).num_tokens for f in val_files)
    if n_tokens != expected.val_tokens:
        raise FetchError(
            f"{variant}: the validation shards hold {n_tokens:,} tokens ({n_tokens - 1:,} targets), expected "
            f"{expected.val_tokens:,} ({expected.val_tokens - 1:,} targets; {CASEOPS_WINDOWED_TARGETS:,} in "
            f"whole 2048-token windows): a truncated or different validation set; delete "
            f"{val_files[0].parent} and fetch again"
        )
    docs = sum(int(np.count_nonzero(read_shard(f) == BOS_ID)) for f in val_files)
    if docs != expected.val_docs:
        raise FetchError(
            f"{variant}: the validation shards hold {docs:,} documents (BOS tokens), "
            f"expected {expected.val_docs:,}"
        )
    side_bytes = 0
    for f in val_files:
        side = sidecar_path(f)
        n_side = read_header(side).num_tokens
        if n_side != read_header(f).num_tokens:
            raise FetchError(
                f"{side}: {n_side:,} byte entries for {read_header(f).num_tokens:,} tokens in {f.name}"
            )
        side_bytes += int(read_shard(side).sum(dtype=np.int64))
    try:
        load_tokenizer(model_file, caseops=True)
    except TokenizerError as e:
        raise FetchError(f"{variant}: {e}") from None
    return {"val_docs": docs, "val_sidecar_bytes": side_bytes}
