"""Check a dataset folder against what it claims to be (``pgolf data info``).

Every shard's header and size; every token id against the vocabulary (the manifest's, or the fetched
tokenizer's); each shard's token count against the manifest's entry, and the set of shards against the
manifest's list; for CaseOps data, each validation shard's byte sidecar (same length; its total equal
to the manifest's validation bytes). A failure raises ``ShardError`` naming the file and the numbers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pgolf_core.data.export import MANIFEST_NAME, read_manifest
from pgolf_core.data.shards import ShardError, read_header, read_shard
from pgolf_core.data.sidecar import is_sidecar, sidecar_path

FETCH_RECORD = "pgolf_fetch.json"


@dataclass
class DatasetCheck:
    root: Path
    vocab_size: int | None  # None: nothing says which vocabulary, ids were not checked
    vocab_source: str
    shards: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # split -> [(file, tokens)]
    sidecars: int = 0

    def lines(self) -> list[str]:
        out = []
        for split, items in self.shards.items():
            ids = f"ids < {self.vocab_size} ({self.vocab_source})" if self.vocab_size else "ids not checked"
            total = sum(n for _, n in items)
            out.append(f"{split}: {len(items)} shard(s), {total:,} tokens, headers and sizes OK, {ids}")
        if self.sidecars:
            out.append(f"val byte sidecars: {self.sidecars}, each as long as its shard")
        return out


def _vocab(root: Path, manifest: dict | None) -> tuple[int | None, str]:
    if manifest is not None:
        return int(manifest["tokenizer"]["vocab_size"]), MANIFEST_NAME
    record_path = root / FETCH_RECORD
    if record_path.is_file():
        try:
            model = json.loads(record_path.read_text(encoding="utf-8"))["tokenizer"]["file"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ShardError(f"{record_path}: unreadable fetch record ({e})") from None
        if Path(model).is_file():
            from pgolf_core.data.tokenizer import load_tokenizer

            return int(load_tokenizer(model).vocab_size()), str(model)
    return None, ""


def verify_dataset(root: str | os.PathLike) -> DatasetCheck:
    """Check every shard of ``root`` (see the module docstring); returns what was checked."""
    root = Path(root)
    files = sorted(p for p in root.glob("fineweb_*_*.bin") if not is_sidecar(p))
    if not files:
        raise FileNotFoundError(f"{root}: no fineweb_*_*.bin shards")
    manifest = read_manifest(root) if (root / MANIFEST_NAME).is_file() else None
    vocab, source = _vocab(root, manifest)
    check = DatasetCheck(root, vocab, source)
    for path in files:
        split = "val" if path.name.startswith("fineweb_val_") else "train"
        tokens = read_shard(path, vocab)  # header, size and (with a vocabulary) every id
        check.shards.setdefault(split, []).append((path.name, int(tokens.shape[0])))
    caseops = (
        bool(manifest.get("caseops")) if manifest is not None else any(root.glob("fineweb_val_bytes_*.bin"))
    )
    if caseops:
        for name, n in check.shards.get("val", []):
            side = sidecar_path(root / name)
            n_side = read_header(side).num_tokens  # raises "shard file not found" naming it
            if n_side != n:
                raise ShardError(f"{side}: {n_side:,} byte entries, but {name} has {n:,} tokens")
            check.sidecars += 1
    if manifest is not None:
        _against_manifest(root, manifest, check, caseops)
    return check


def _against_manifest(root: Path, manifest: dict, check: DatasetCheck, caseops: bool) -> None:
    where = root / MANIFEST_NAME
    for split, info in manifest["splits"].items():
        listed = {s["file"]: int(s["tokens"]) for s in info["shards"]}
        found = dict(check.shards.get(split, []))
        missing, extra = sorted(set(listed) - set(found)), sorted(set(found) - set(listed))
        if missing:
            raise ShardError(f"{where}: lists {split} shards {missing} that are not in {root}")
        if extra:
            raise ShardError(f"{root}: {split} shards {extra} are not listed in {where}")
        for name, n in found.items():
            if n != listed[name]:
                raise ShardError(f"{root / name}: {n:,} tokens, but {where} says {listed[name]:,}")
        if sum(found.values()) != int(info["tokens"]):
            raise ShardError(
                f"{where}: {split} tokens {int(info['tokens']):,}, the shards hold {sum(found.values()):,}"
            )
    if caseops:
        total = sum(
            int(read_shard(sidecar_path(root / name)).sum(dtype=np.int64))
            for name, _ in check.shards.get("val", [])
        )
        want = int(manifest["splits"]["val"]["bytes"])
        if total != want:
            raise ShardError(
                f"{root}: the val byte sidecars sum to {total:,} bytes, but {where} says {want:,}"
            )
