"""Download the challenge's published FineWeb shards and tokenizer (for pods), manifest-driven.

Layout on the Hub (a dataset repo): ``<root>/manifest.json`` lists the datasets (name, tokenizer_name,
stats.files_train / files_val) and the tokenizers (name, model_path, vocab_path); shards live in
``<root>/datasets/<dataset>/fineweb_{val,train}_%06d.bin`` and tokenizers under ``<root>/tokenizers/``.
sp1024 is published by the challenge (``willdepueoai/parameter-golf``); sp8192, used from PR #1394 on,
by ``kevclark/parameter-golf`` with the same layout (records.md A2).

Locally the files land where the challenge's scripts put them: ``data/datasets/<dataset>/`` and
``data/tokenizers/``. Downloads are resumable (a present file with a valid header is kept), each shard
is header-checked, and ``pgolf_fetch.json`` records what came from where.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pgolf_core.atomic import atomic_write, atomic_write_json
from pgolf_core.data.shards import ShardError, read_header
from pgolf_core.data.tokenizer import file_sha256

REMOTE_ROOT = "datasets"


@dataclass(frozen=True)
class Variant:
    repo_id: str
    dataset: str


OFFICIAL_VARIANTS = {
    "sp1024": Variant("willdepueoai/parameter-golf", "fineweb10B_sp1024"),
    "sp8192": Variant("kevclark/parameter-golf", "fineweb10B_sp8192"),
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
            f"could not download {where}: huggingface.co is unreachable and the file is not cached ({exc.__class__.__name__}). "
            "`pgolf data fetch` needs network access; offline, use `pgolf data smoke` for the embedded corpus, "
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
            cached = Path(self.download(repo_id=self.repo_id, filename=name, subfolder=sub or None, repo_type="dataset"))
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
    if train_shards > n_train:
        raise FetchError(f"{variant} has {n_train} train shards on {repo_id}; asked for {train_shards}")
    tokenizer = _entry(manifest.get("tokenizers", []), dataset.get("tokenizer_name"), "tokenizer", repo_id)

    data_dir = out_root / "datasets" / spec.dataset
    jobs = [(f"datasets/{spec.dataset}/fineweb_val_{i:06d}.bin", data_dir / f"fineweb_val_{i:06d}.bin", True) for i in range(n_val)]
    jobs += [(f"datasets/{spec.dataset}/fineweb_train_{i:06d}.bin", data_dir / f"fineweb_train_{i:06d}.bin", True) for i in range(train_shards)]
    tok_files = [tokenizer[k] for k in ("model_path", "vocab_path") if tokenizer.get(k)]
    if not any(str(f).endswith(".model") for f in tok_files):
        raise FetchError(f"tokenizer entry {tokenizer.get('name')!r} in {repo_id}'s manifest has no .model file")
    jobs += [(f, out_root / "tokenizers" / Path(f).name, False) for f in tok_files]

    for remote, dest, is_shard in tqdm(jobs, desc=f"fetch {variant}", unit="file", disable=not progress):
        client.get(remote, dest, check_shard=is_shard)

    model_file = next(out_root / "tokenizers" / Path(f).name for f in tok_files if str(f).endswith(".model"))
    record = {
        "variant": variant,
        "repo_id": repo_id,
        "remote_root": remote_root,
        "dataset": spec.dataset,
        "val_shards": n_val,
        "train_shards": train_shards,
        "tokens": {"val": sum(read_header(d).num_tokens for _, d, s in jobs if s and "_val_" in d.name),
                   "train": sum(read_header(d).num_tokens for _, d, s in jobs if s and "_train_" in d.name)},
        "tokenizer": {"file": str(model_file), "sha256": file_sha256(model_file)},
    }
    atomic_write_json(data_dir / "pgolf_fetch.json", record)
    return record
