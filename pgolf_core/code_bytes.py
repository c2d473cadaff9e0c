"""Counted code: which files a submission ships and how many bytes they weigh, in one place.

The challenge counts the code bytes of a submission with its compressed model against the decimal
cap (``pgolf_core.challenge.BYTE_CAP``): raw file sizes, as the baseline and #549 / #1019 counted
train_gpt.py. The artifact accounting (quant/artifact.py), the export (submission.py) and compliance T7
all count through ``counted_files`` / ``file_bytes`` here. This module imports nothing heavy, so that
the config can take its default file list from it.

``quant.code_files`` are globs relative to the project root; a glob that leaves it (absolute, ``..``,
or a match that resolves outside it through a link) is an error, as is one that matches nothing (a
typo must not silently shrink the count).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

# What a run imports to train, quantize and score (conservatively every such file: code a run loads
# counts, whether or not it is needed); tooling that never runs in a submission (CLI, notebook driver,
# reports, data preparation) is left out. challenge.py and this module are imported by the config.
RUNTIME_CODE_FILES = (
    "pgolf_core/__init__.py",
    "pgolf_core/atomic.py",
    "pgolf_core/challenge.py",
    "pgolf_core/config/*.py",
    "pgolf_core/dist.py",
    "pgolf_core/run_data.py",
    "pgolf_core/eval/*.py",
    "pgolf_core/runtime.py",
    "pgolf_core/train.py",
    "pgolf_core/train_schedule.py",
    "pgolf_core/checkpoint.py",
    "pgolf_core/runfolder.py",
    "pgolf_core/handoff.py",
    "pgolf_core/launch.py",
    "pgolf_core/scoring.py",
    "pgolf_core/stages.py",
    "pgolf_core/pipeline/*.py",
    "pgolf_core/compliance/*.py",
    "pgolf_core/data/byte_recount.py",
    "pgolf_core/ngram/*.py",
    "pgolf_core/data/__init__.py",
    "pgolf_core/data/shards.py",
    "pgolf_core/data/loader.py",
    "pgolf_core/data/tokenizer.py",
    "pgolf_core/data/tokenizer_bytes.py",
    "pgolf_core/data/overlap.py",
    "pgolf_core/model/*.py",
    "pgolf_core/optim/*.py",
    "pgolf_core/quant/*.py",
    "pgolf_core/ttt/*.py",
    "pgolf_core/code_bytes.py",
    "pgolf_core/errors.py",
    "pgolf_core/data/sidecar.py",
    "pgolf_core/data/caseops.py",
    "pgolf_core/data/prepare.py",
    "pgolf_core/data/fetch.py",
    "pgolf_core/data/smoke.py",
    "pgolf_core/data/export.py",
)


class CodeFilesError(ValueError):
    """A ``quant.code_files`` glob leaves the project root."""


def check_code_globs(patterns: Iterable[str]) -> list[str]:
    """The patterns, unchanged, if none is absolute or climbs out with ``..``; else CodeFilesError."""
    patterns = list(patterns)
    for pattern in patterns:
        parts = PurePosixPath(pattern.replace("\\", "/")).parts
        if os.path.isabs(pattern) or pattern.startswith(("/", "\\")) or ".." in parts:
            raise CodeFilesError(
                f"quant.code_files: {pattern!r} leaves the project; code files are globs relative to the "
                "project root, such as 'pgolf_core/model/*.py'"
            )
    return patterns


def counted_files(patterns: Iterable[str], root: str | os.PathLike) -> list[Path]:
    """Every file matched by ``patterns`` under ``root``, relative to it, each once, sorted.

    ``__pycache__`` is skipped. Raises CodeFilesError for a glob or match outside ``root`` and
    FileNotFoundError for a glob that matches nothing.
    """
    root = Path(root)
    inside = root.resolve()
    files: set[Path] = set()
    for pattern in check_code_globs(patterns):
        matched = [p for p in root.glob(pattern) if p.is_file() and "__pycache__" not in p.parts]
        if not matched:
            raise FileNotFoundError(f"quant.code_files: {pattern!r} matches no file under {inside}")
        for p in matched:
            if not p.resolve().is_relative_to(inside):
                raise CodeFilesError(
                    f"quant.code_files: {pattern!r} matches {p}, which resolves to "
                    f"{p.resolve()}, outside the project {inside}"
                )
            files.add(p.relative_to(root))
    return sorted(files)


def file_bytes(paths: Iterable[str | os.PathLike]) -> int:
    """Raw bytes of the given files as shipped, each file counted once however often it is named."""
    return sum(Path(p).stat().st_size for p in {Path(p).resolve() for p in paths})


def counted_bytes(patterns: Iterable[str], root: str | os.PathLike) -> int:
    """Bytes of the code that ``patterns`` (``quant.code_files``) select under ``root``."""
    root = Path(root)
    return file_bytes(root / f for f in counted_files(patterns, root))
