"""Documents -> challenge shards, as the challenge's data export writes them, with a manifest.

Each document is encoded as ``[BOS] + tokens`` (no EOS). The first ``val_docs`` documents go to
``fineweb_val_*.bin``, the rest to ``fineweb_train_*.bin``; the validation buffer is flushed before the
first training document, so the two splits never share a shard. Training documents may straddle
shard boundaries. A whole dataset is built in ``<out>.partial/`` and renamed into place at the end, so a
crash never leaves a half-written dataset behind a valid-looking manifest (and a failed build removes
its ``.partial/`` folder).

With ``caseops`` each document is CaseOps-transformed before tokenizing (``caseops.py``; the tokenizer
must be a CaseOps one), and every validation shard gets its byte sidecar ``fineweb_val_bytes_*.bin``
(``sidecar.py``); the manifest's byte counts are then those of the original text.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

import pgolf_core
from pgolf_core.atomic import atomic_write_json
from pgolf_core.data import caseops as case_transform
from pgolf_core.data.shards import ShardError, write_shard
from pgolf_core.data.sidecar import build_sidecar_tables, sidecar_bytes
from pgolf_core.data.tokenizer import BOS_ID, file_sha256, load_tokenizer
from pgolf_core.data.tokenizer_bytes import build_byte_luts, token_bytes

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "pgolf-shards/1"
CHALLENGE_SHARD_TOKENS = 10**8


class ExportError(ValueError):
    """Input documents or export settings are unusable; the message says which and why."""


def _surrogate(text: str) -> int:
    """Index of the first surrogate code point in ``text`` (not valid Unicode text), or -1."""
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            return i
    return -1


def unicode_problem(text: str) -> str | None:
    """Why ``text`` cannot be written as UTF-8 (a lone surrogate), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        i = _surrogate(text)
        return f"a lone surrogate U+{ord(text[i]):04X} at character {i + 1} (expected valid Unicode text)"
    return None


def iter_jsonl_texts(path: str | os.PathLike, text_field: str = "text") -> Iterator[str]:
    """Yield ``record[text_field]`` from a JSONL file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: documents file not found")
    # surrogateescape: an invalid byte becomes U+DC80..U+DCFF, found below with its line and column.
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for lineno, line in enumerate(f, 1):
            bad = _surrogate(line)
            if bad >= 0:
                byte = ord(line[bad]) - 0xDC00
                raise ExportError(
                    f"{path}:{lineno}: not valid UTF-8 (byte 0x{byte:02X} at character {bad + 1})"
                )
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ExportError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ExportError(f"{path}:{lineno}: no {text_field!r} field (found {keys})")
            text = record[text_field]
            if not isinstance(text, str):
                raise ExportError(
                    f"{path}:{lineno}: field {text_field!r} is {type(text).__name__}, expected a string"
                )
            problem = unicode_problem(text)
            if problem:
                raise ExportError(f"{path}:{lineno}: field {text_field!r} holds {problem}")
            yield text


@dataclass
class SplitStats:
    documents: int = 0
    tokens: int = 0
    bytes: int = 0
    shards: list[dict] = field(default_factory=list)

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens if self.tokens else 0.0


class _ShardWriter:
    """Buffers tokens of one split and writes fixed-size shards named like the challenge's; with
    ``sidecar`` also the byte sidecar of each shard, cut at the same positions."""

    def __init__(
        self,
        out_dir: Path,
        split: str,
        shard_tokens: int,
        vocab_size: int,
        stats: SplitStats,
        sidecar: bool = False,
    ):
        self.out_dir, self.split, self.shard_tokens = out_dir, split, shard_tokens
        self.vocab_size, self.stats, self.sidecar = vocab_size, stats, sidecar
        self.parts: list[np.ndarray] = []
        self.byte_parts: list[np.ndarray] = []
        self.buffered = 0

    def add(self, tokens: np.ndarray, nbytes: np.ndarray | None = None) -> None:
        while tokens.size:
            room = self.shard_tokens - self.buffered
            self.parts.append(tokens[:room])
            if self.sidecar:
                self.byte_parts.append(nbytes[:room])
                nbytes = nbytes[room:]
            self.buffered += min(room, tokens.size)
            tokens = tokens[room:]
            if self.buffered == self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        index = len(self.stats.shards)
        name = f"fineweb_{self.split}_{index:06d}.bin"
        write_shard(self.out_dir / name, np.concatenate(self.parts), vocab_size=self.vocab_size)
        entry = {"file": name, "tokens": self.buffered}
        if self.sidecar:
            entry["bytes_file"] = f"fineweb_{self.split}_bytes_{index:06d}.bin"
            write_shard(self.out_dir / entry["bytes_file"], np.concatenate(self.byte_parts))
        self.stats.shards.append(entry)
        self.parts, self.byte_parts, self.buffered = [], [], 0


def _batches(docs: Iterable[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for d in docs:
        if not isinstance(d, str):
            raise ExportError(f"documents must be strings, got {type(d).__name__}")
        batch.append(d)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def unigram_bpb(train_counts: np.ndarray, val_target_counts: np.ndarray, val_bytes: int) -> float:
    """bpb of the validation targets under the training unigram distribution (add-one smoothed).

    A floor any trained model must beat by a wide margin: it knows token frequencies and nothing else.
    """
    probs = (train_counts + 1.0) / (train_counts.sum() + train_counts.size)
    nll = -float(np.dot(val_target_counts, np.log(probs)))
    return nll / (math.log(2.0) * val_bytes) if val_bytes else float("nan")


def _batch_sidecars(streams: list[np.ndarray], tables) -> list[np.ndarray]:
    """The sidecar of each document, computed over the batch at once: every document starts with BOS
    (a boundary with 0 bytes that no escape crosses), so the concatenation gives the same entries."""
    counts = sidecar_bytes(np.concatenate(streams), tables)
    return np.split(counts, np.cumsum([t.size for t in streams])[:-1])


def export_documents(
    docs: Iterable[str],
    tokenizer_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    val_docs: int,
    shard_tokens: int = CHALLENGE_SHARD_TOKENS,
    corpus_name: str = "custom",
    batch_docs: int = 512,
    progress: bool = True,
    caseops: bool = False,
) -> dict:
    """Tokenize ``docs`` into shards under ``out_dir`` and write ``manifest.json``; returns the manifest.

    ``caseops``: transform each document first and write the validation byte sidecar (the tokenizer
    must be a CaseOps one; a plain export refuses a CaseOps tokenizer, which would count its markers).
    """
    if val_docs < 0:
        raise ExportError(f"val_docs must be >= 0, got {val_docs}")
    if shard_tokens <= 0:
        raise ExportError(f"shard_tokens must be > 0, got {shard_tokens}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sp = load_tokenizer(tokenizer_path, caseops=caseops)
    vocab = int(sp.vocab_size())
    if vocab > 1 << 16:
        raise ExportError(f"{tokenizer_path}: vocab size {vocab} does not fit uint16 shards (max 65536)")
    luts = build_byte_luts(sp, vocab)
    tables = build_sidecar_tables(sp, vocab) if caseops else None
    splits = {"val": SplitStats(), "train": SplitStats()}
    writers = {
        s: _ShardWriter(out_dir, s, shard_tokens, vocab, splits[s], sidecar=caseops and s == "val")
        for s in splits
    }
    train_counts = np.zeros(vocab, dtype=np.int64)
    val_counts = np.zeros(vocab, dtype=np.int64)
    corpus_hash = hashlib.sha256()
    seen = 0
    bar = tqdm(desc=f"export {corpus_name}", unit="doc", disable=not progress, mininterval=5)
    for batch in _batches(docs, batch_docs):
        raws = []
        for i, text in enumerate(batch):
            problem = unicode_problem(text)
            if problem:
                raise ExportError(f"document {seen + i} holds {problem}")
            raws.append(text.encode("utf-8"))
        inputs = [case_transform.encode(t) for t in batch] if caseops else batch
        streams = [np.asarray([BOS_ID, *ids], dtype=np.int64) for ids in sp.encode(inputs)]
        side = _batch_sidecars(streams, tables) if tables is not None else [None] * len(streams)
        for raw, tokens, nbytes in zip(raws, streams, side, strict=True):
            corpus_hash.update(len(raw).to_bytes(8, "little") + raw)
            split = "val" if seen < val_docs else "train"
            if split == "train" and seen == val_docs:
                writers["val"].flush()  # val never shares a shard with train
            stats = splits[split]
            stats.documents += 1
            stats.tokens += tokens.size
            if nbytes is not None:
                stats.bytes += int(nbytes.sum(dtype=np.int64))
            else:
                stats.bytes += int(token_bytes(tokens[:-1], tokens[1:], luts).sum())
            counts = train_counts if split == "train" else val_counts
            counts += np.bincount(tokens, minlength=vocab)
            writers[split].add(tokens, nbytes)
            seen += 1
        bar.update(len(batch))
    bar.close()
    if seen < val_docs:
        raise ExportError(f"asked for {val_docs} validation documents but the corpus has only {seen}")
    for w in writers.values():
        w.flush()
    if val_counts.sum():
        val_counts[BOS_ID] -= 1  # the stream's first token is context, never a target
    manifest = {
        "format": MANIFEST_FORMAT,
        "created_by": f"pgolf {pgolf_core.__version__}",
        "corpus": {"name": corpus_name, "sha256": corpus_hash.hexdigest(), "documents": seen},
        "tokenizer": {
            "file": os.path.relpath(Path(tokenizer_path).resolve(), out_dir.resolve()),
            "sha256": file_sha256(tokenizer_path),
            "vocab_size": vocab,
        },
        "shard_tokens": shard_tokens,
        "caseops": caseops,
        "splits": {name: {**asdict(s), "bytes_per_token": s.bytes_per_token} for name, s in splits.items()},
        "unigram_bpb": unigram_bpb(train_counts, val_counts, splits["val"].bytes),
    }
    if caseops:
        manifest["caseops_transform"] = {
            "name": case_transform.TRANSFORM_NAME,
            "marker_ids": list(tables.marker_ids),
            "val_byte_sidecar": "fineweb_val_bytes_*.bin: per token, the original UTF-8 bytes it stands for",
        }
    atomic_write_json(out_dir / MANIFEST_NAME, manifest)
    return manifest


_PARTIAL_MARK = ".pgolf-partial"


@contextlib.contextmanager
def staged_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh ``<out>.partial`` folder; on success it replaces ``out_dir`` in one rename, on any
    failure it is removed (it holds only what this build wrote)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; pass --force (overwrite=True) to rebuild it")
    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists():
        if not partial.is_dir() or (not (partial / _PARTIAL_MARK).is_file() and any(partial.iterdir())):
            raise ExportError(f"{partial} exists and was not left by a pgolf build; move it away first")
        shutil.rmtree(partial)  # a build that was killed before it could clean up
    partial.mkdir(parents=True)
    (partial / _PARTIAL_MARK).touch()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    (partial / _PARTIAL_MARK).unlink()
    old = out_dir.with_name(out_dir.name + ".old")
    if out_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
    os.replace(partial, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no dataset manifest (build one with `pgolf data smoke` or `pgolf data export`)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ShardError(f"{path}: manifest is not valid JSON ({e.msg})") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ShardError(f"{path}: manifest format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return manifest


def describe_manifest(manifest: dict, where: str | os.PathLike = "") -> str:
    """A human summary: documents, tokens, bytes and bytes per token per split."""
    corpus, tok = manifest["corpus"], manifest["tokenizer"]
    lines = [
        f"dataset {corpus['name']!r}"
        + (f" at {where}" if where else "")
        + f"  (corpus sha256 {corpus['sha256'][:12]})",
        f"tokenizer {tok['file']}  vocab {tok['vocab_size']}  sha256 {tok['sha256'][:12]}",
        f"{'split':<6}{'documents':>11}{'tokens':>12}{'bytes':>12}{'bytes/token':>13}{'shards':>8}",
    ]
    for name, s in manifest["splits"].items():
        lines.append(
            f"{name:<6}{s['documents']:>11,}{s['tokens']:>12,}{s['bytes']:>12,}{s['bytes_per_token']:>13.4f}{len(s['shards']):>8}"
        )
    if manifest.get("caseops"):
        lines.append(
            "CaseOps: tokens of the case-transformed text; bytes (and bpb) over the original text, "
            "from the validation byte sidecar fineweb_val_bytes_*.bin"
        )
    lines.append(f"unigram bpb of val under the train unigram distribution: {manifest['unigram_bpb']:.4f}")
    return "\n".join(lines)
