"""The embedded smoke corpus: English prose that ships with every CPython, no network needed.

It is NOT FineWeb. It exists so that every stage (tokenizer, shards, training, quantization,
evaluation, reports) runs end to end on a laptop CPU in minutes, offline and deterministically.

Documents, in a fixed order before a seeded shuffle:
- every topic of ``pydoc_data.topics`` (the language reference behind ``help()``), one document each;
- for every standard-library module (sorted by path; tests, idlelib and site-packages excluded), one
  document made of its docstrings in source order: the module's, then each class's and function's,
  each headed by its qualified name. Sources are parsed with ``ast``; nothing is imported.

Near-duplicates are dropped (longest first, a document goes when 30% of its 16-word shingles are
already in kept documents): pydoc topics nest (``if`` is a section of ``compound``) and generated
modules share docstrings (the ``encodings.mac_*`` codecs, ``lib2to3``'s copy of ``tokenize``), and
without this some validation documents were mostly present in training text (the T9 split check).

The corpus depends only on the CPython version; the manifest records its sha256 and the Python version.
"""

from __future__ import annotations

import ast
import functools
import random
import sys
import sysconfig
import time
from pathlib import Path
from pydoc_data import topics as _pydoc_topics

import numpy as np

from pgolf_core.atomic import atomic_write_json
from pgolf_core.data.export import MANIFEST_NAME, export_documents, staged_dir
from pgolf_core.data.overlap import shingle_hashes
from pgolf_core.data.tokenizer import train_tokenizer

SMOKE_DIR = Path("data/smoke")
SMOKE_CASEOPS_DIR = Path("data/smoke_caseops")
SMOKE_VOCAB = 1024
SMOKE_VAL_DOCS = 64
SMOKE_SHARD_TOKENS = 1 << 17  # small shards so multi-shard loading is exercised
SMOKE_SEED = 20240520
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "idle_test", "__pycache__"}


def _docstrings(tree: ast.Module, module: str) -> list[str]:
    """Docstrings of a module, its classes and functions, depth-first in source order."""
    out: list[str] = []

    def visit(node: ast.AST, qual: str) -> None:
        doc = ast.get_docstring(node, clean=True)
        if doc:
            out.append(f"{qual}\n{doc}")
        for child in getattr(node, "body", []):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, f"{qual}.{child.name}")

    visit(tree, module)
    return out


def stdlib_documents() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):  # a few files are deliberately broken fixtures
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        parts = _docstrings(tree, module)
        if parts:
            docs.append("\n\n".join(parts))
    return docs


DEDUP_SHINGLE_WORDS = 16
DEDUP_CONTAINMENT = 0.3


def drop_near_duplicates(
    docs: list[str], k: int = DEDUP_SHINGLE_WORDS, containment: float = DEDUP_CONTAINMENT
) -> list[str]:
    """``docs`` (in their order) without those whose k-word shingles are at least ``containment``
    inside the shingles of longer kept documents (exact duplicates: the first is kept)."""
    vocab: dict[str, int] = {}
    shingles = []
    for text in docs:
        ids = np.array([vocab.setdefault(w, len(vocab)) for w in text.split()], dtype=np.int64)
        hashes, _ = shingle_hashes(ids, min(k, max(len(ids), 1)), bos_id=-1)
        shingles.append(set(hashes.tolist()))
    seen: set[int] = set()
    keep = []
    for i in sorted(range(len(docs)), key=lambda i: (-len(docs[i]), i)):
        own = shingles[i]
        if own and len(own & seen) >= containment * len(own):
            continue
        seen |= own
        keep.append(i)
    return [docs[i] for i in sorted(keep)]


@functools.lru_cache(maxsize=2)
def smoke_documents(seed: int = SMOKE_SEED) -> tuple[str, ...]:
    """All smoke documents in their fixed, shuffled order (validation takes the first ones)."""
    docs = drop_near_duplicates(
        [_pydoc_topics.topics[k] for k in sorted(_pydoc_topics.topics)] + stdlib_documents()
    )
    random.Random(seed).shuffle(docs)
    return tuple(docs)


def build_smoke_dataset(
    out_dir: str | Path = SMOKE_DIR,
    *,
    vocab_size: int = SMOKE_VOCAB,
    val_docs: int = SMOKE_VAL_DOCS,
    shard_tokens: int = SMOKE_SHARD_TOKENS,
    overwrite: bool = False,
    progress: bool = True,
    caseops: bool = False,
) -> dict:
    """Build tokenizer (trained on the training documents only) and shards; returns the manifest.

    ``caseops``: a CaseOps tokenizer and transformed shards with the validation byte sidecar (the
    conventional folder is ``SMOKE_CASEOPS_DIR``)."""
    t0 = time.perf_counter()
    docs = smoke_documents()
    with staged_dir(out_dir, overwrite=overwrite) as work:
        model = train_tokenizer(docs[val_docs:], vocab_size, work / "tokenizer", caseops=caseops)
        manifest = export_documents(
            docs,
            model,
            work,
            val_docs=val_docs,
            shard_tokens=shard_tokens,
            corpus_name="smoke",
            progress=progress,
            caseops=caseops,
        )
        manifest["corpus"]["python"] = sys.version.split()[0]
        manifest["build_seconds"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(work / MANIFEST_NAME, manifest)
    return manifest
