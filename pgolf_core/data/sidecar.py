"""The validation byte sidecar of CaseOps data: how many original UTF-8 bytes each token stands for.

With a CaseOps tokenizer the byte tables of ``tokenizer_bytes`` would count each case marker as the 3
bytes of its private-use character, although the original text has no such bytes: that is the
denominator error of #2138 (+8.95% bytes; a claimed 0.979556 bpb was really 1.067219). So a CaseOps
export writes, beside every validation shard ``fineweb_val_%06d.bin``, a ``fineweb_val_bytes_%06d.bin``
in the same shard format holding one uint16 per token:

- BOS and every case marker that acts as an operator: 0;
- a marker character that is escaped (it follows an ESC operator), i.e. a literal U+E001-U+E004 of the
  original text: its 3 UTF-8 bytes;
- any other piece: the challenge's byte-table count (UTF-8 length of the piece, its leading "▁" as one
  space unless it follows BOS; byte-fallback pieces 1 each). Case does not change the length of an
  ASCII letter, so these are the bytes of the original text.

The counts are those of the text SentencePiece keeps (runs of whitespace collapsed, NFKC applied,
leading and trailing whitespace dropped), exactly as the byte tables count a plain tokenizer's text:
the CaseOps and the plain denominator of the same documents are equal, which is the point of the
transform (it changes tokens, not bytes). An export that measured each piece's raw span of the input
instead would also count the whitespace SentencePiece collapsed; the two differ only there and where
NFKC changed a character's length.

Evaluation: bpb = total NLL / (ln 2 * B), B = the sidecar entries of the scored targets
(``target_byte_counts``) summed in float64, over the stream ``loader.load_validation_bytes`` returns
aligned with ``loader.load_validation_tokens``. ``recount_original_bytes`` is the slow, independent
check (T10): decode the tokens, undo the transform, count UTF-8 bytes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from pgolf_core.data import caseops
from pgolf_core.data.shards import ShardError
from pgolf_core.data.tokenizer import caseops_marker_ids
from pgolf_core.data.tokenizer_bytes import ByteLUTs, build_byte_luts, stream_bytes

SIDECAR_GLOB = "fineweb_val_bytes_*.bin"
_VAL_SHARD = re.compile(r"^fineweb_val_(\d+)\.bin$")
LITERAL_MARKER_BYTES = len(caseops.TITLE.encode("utf-8"))  # 3, the same for all four


class SidecarError(ShardError):
    """A byte sidecar is missing or does not line up with its token shard."""


def is_sidecar(path: str | os.PathLike) -> bool:
    """True for ``*_bytes_*`` files: byte counts, never tokens."""
    return "_bytes_" in Path(path).name


def sidecar_path(token_shard: str | os.PathLike) -> Path:
    """``.../fineweb_val_000003.bin`` -> ``.../fineweb_val_bytes_000003.bin``."""
    token_shard = Path(token_shard)
    m = _VAL_SHARD.match(token_shard.name)
    if m is None:
        raise SidecarError(
            f"{token_shard}: not a validation shard name (fineweb_val_NNNNNN.bin), so it has no byte sidecar"
        )
    return token_shard.with_name(f"fineweb_val_bytes_{m.group(1)}.bin")


@dataclass(frozen=True)
class SidecarTables:
    """The byte tables with the markers at 0, and the marker ids (ESC last)."""

    luts: ByteLUTs
    marker_ids: tuple[int, ...]

    @property
    def esc_id(self) -> int:
        return self.marker_ids[-1]


def build_sidecar_tables(sp: spm.SentencePieceProcessor, vocab_size: int | None = None) -> SidecarTables:
    ids = caseops_marker_ids(sp)
    if ids is None:
        raise SidecarError("a byte sidecar needs a CaseOps tokenizer (the case markers at ids 4-7)")
    luts = build_byte_luts(sp, vocab_size)
    base = luts.base_bytes.copy()
    base[list(ids)] = 0
    return SidecarTables(ByteLUTs(base, luts.has_leading_space, luts.is_boundary), ids)


def literal_markers(tokens: np.ndarray, tables: SidecarTables) -> np.ndarray:
    """Bool per position: a marker token that stands for a literal marker character.

    Escapes pair left to right: in a run of consecutive ESC tokens the 1st, 3rd, ... are operators and
    the 2nd, 4th, ... literals; a TITLE / ALLCAPS / CAPNEXT token is literal right after an ESC operator.
    """
    t = np.asarray(tokens)
    n = t.size
    is_esc = t == tables.esc_id
    if not is_esc.any():  # nearly always: only text holding U+E001-U+E004 itself has escapes
        return np.zeros(n, dtype=bool)
    idx = np.arange(n)
    last_other = np.maximum.accumulate(np.where(is_esc, -1, idx)) if n else idx
    in_run = idx - last_other - 1  # position inside the current run of ESC tokens
    esc_literal = is_esc & (in_run % 2 == 1)
    esc_operator = is_esc & ~esc_literal
    other_marker = np.isin(t, tables.marker_ids[:-1])
    after_operator = np.zeros(n, dtype=bool)
    after_operator[1:] = esc_operator[:-1]
    return esc_literal | (other_marker & after_operator)


def sidecar_bytes(tokens: np.ndarray, tables: SidecarTables) -> np.ndarray:
    """The sidecar entry (uint16) of every token of a stream; position 0 counts as following BOS."""
    t = np.asarray(tokens, dtype=np.int64)
    if t.size == 0:
        return np.zeros(0, dtype=np.uint16)
    luts = tables.luts
    prev_boundary = np.empty(t.size, dtype=bool)
    prev_boundary[0] = True
    prev_boundary[1:] = luts.is_boundary[t[:-1]]
    out = luts.base_bytes[t].astype(np.int64) + (luts.has_leading_space[t] & ~prev_boundary)
    out[literal_markers(t, tables)] = LITERAL_MARKER_BYTES
    return out.astype(np.uint16)


def target_byte_counts(val_bytes: Any, start: int, end: int) -> Any:
    """Bytes of the targets at stream positions ``start`` .. ``end - 1`` (int64; numpy or torch alike).

    A window over tokens ``[s, e]`` predicts the targets at ``s + 1 .. e``: pass ``(s + 1, e + 1)``.
    Position 0 is context only; the stream's sidecar entry there is BOS's 0 anyway.
    """
    if start < 1 or end < start:
        raise ValueError(f"target range [{start}, {end}) must satisfy 1 <= start <= end")
    part = val_bytes[start:end]
    if isinstance(part, np.ndarray):
        return part.astype(np.int64)
    return part.long()


def recount_original_bytes(tokens: np.ndarray, sp: spm.SentencePieceProcessor) -> int:
    """UTF-8 bytes of the original text the target tokens stand for: decode each run between special
    tokens (BOS, unk, ...), undo the case transform (leniently: a stray marker counts nothing), count.

    The T10 reference for CaseOps data, independent of the sidecar's tables. Position 0 is context only.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    n_sp = int(sp.vocab_size())
    special = np.ones(max(n_sp, int(tokens.max(initial=0)) + 1), dtype=bool)
    for i in range(n_sp):
        special[i] = bool(sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))

    def run_bytes(run: np.ndarray) -> int:
        return len(caseops.decode(sp.decode(run.tolist()), strict=False).encode("utf-8")) if run.size else 0

    total = 0
    cuts = np.flatnonzero(special[tokens])
    for s, e in zip(
        np.concatenate([[0], cuts + 1]).tolist(), np.concatenate([cuts, [tokens.size]]).tolist(), strict=True
    ):
        if e > s:
            total += run_bytes(tokens[s:e]) - (run_bytes(tokens[0:1]) if s == 0 else 0)
    return total


def transformed_bytes(tokens: np.ndarray, luts: ByteLUTs) -> int:
    """The wrong denominator of #2138: the byte tables of the CaseOps tokenizer, markers counted as
    the 3 bytes of their characters (what a plain recount of the decoded, still transformed text gives)."""
    return stream_bytes(tokens, luts)
