"""Make sure a config's data exists before anything runs: build the smoke corpus, or fetch the official
shards, when they are missing (so a notebook or `make smoke` works on a fresh clone)."""

from __future__ import annotations

from pathlib import Path

from pgolf_core.config import DataConfig
from pgolf_core.data.sidecar import is_sidecar


def caseops_enabled(dc: DataConfig) -> bool:
    """The data config's CaseOps switch (``data.caseops``; False where the schema has no such field yet)."""
    return bool(getattr(dc, "caseops", False))


def _has(root: Path, pattern: str, sidecars: bool = False) -> bool:
    return any(is_sidecar(p) == sidecars for p in root.glob(pattern))


def ensure_data(dc: DataConfig, *, progress: bool = True) -> Path:
    """The dataset folder of ``dc``, built (smoke) or downloaded (official) first if it has no shards."""
    root = dc.root_path()
    caseops = caseops_enabled(dc)
    have = _has(root, dc.val_pattern) and _has(root, dc.train_pattern) and dc.tokenizer_path().is_file()
    if caseops:
        have = have and _has(root, "fineweb_val_bytes_*.bin", sidecars=True)
    if have:
        return root
    if dc.source == "smoke":
        from pgolf_core.data.smoke import build_smoke_dataset

        kind = "CaseOps smoke" if caseops else "smoke"
        print(f"{root}: no {kind} dataset yet, building it (about 10 s)")
        build_smoke_dataset(root, overwrite=root.exists(), progress=progress, caseops=caseops)
    elif dc.source == "official" and dc.root is None and dc.tokenizer is None:
        from pgolf_core.data.fetch import fetch_official

        print(f"{root}: no shards yet, downloading {dc.variant} ({dc.train_shards} train shards)")
        fetch_official(dc.variant, dc.train_shards, out_root=root.parent.parent, progress=progress)
    else:
        sidecar = " with the val byte sidecars fineweb_val_bytes_*.bin" if caseops else ""
        raise FileNotFoundError(
            f"data.root {root}: no shards matching {dc.val_pattern} / {dc.train_pattern}{sidecar} (or no "
            f"tokenizer at {dc.tokenizer_path()}); export some with `pgolf data export`"
            + (" --caseops" if caseops else "")
        )
    return root
