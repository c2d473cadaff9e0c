"""Make sure a config's data exists before anything runs: build the smoke corpus, or fetch the official
shards, when they are missing (so a notebook or `make smoke` works on a fresh clone)."""

from __future__ import annotations

from pathlib import Path

from pgolf_core.config import DataConfig


def ensure_data(dc: DataConfig, *, progress: bool = True) -> Path:
    """The dataset folder of ``dc``, built (smoke) or downloaded (official) first if it has no shards."""
    root = dc.root_path()
    have = any(root.glob(dc.val_pattern)) and any(root.glob(dc.train_pattern)) and dc.tokenizer_path().is_file()
    if have:
        return root
    if dc.source == "smoke":
        from pgolf_core.data.smoke import build_smoke_dataset

        print(f"{root}: no smoke dataset yet, building it (about 10 s)")
        build_smoke_dataset(root, overwrite=root.exists(), progress=progress)
    elif dc.source == "official" and dc.root is None and dc.tokenizer is None:
        from pgolf_core.data.fetch import fetch_official

        print(f"{root}: no shards yet, downloading {dc.variant} ({dc.train_shards} train shards)")
        fetch_official(dc.variant, dc.train_shards, out_root=root.parent.parent, progress=progress)
    else:
        raise FileNotFoundError(
            f"data.root {root}: no shards matching {dc.val_pattern} / {dc.train_pattern} (or no tokenizer at "
            f"{dc.tokenizer_path()}); export some with `pgolf data export`"
        )
    return root
