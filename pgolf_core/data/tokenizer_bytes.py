"""Exact bytes per token and bits per byte, as the challenge counts them (``eval_val`` in ``train_gpt.py``).

bpb makes scores comparable across tokenizers: it divides the total NLL (in bits) by the number of
UTF-8 bytes the scored tokens stand for. The byte count of a target token comes from three tables
built from the SentencePiece model:

- ``base_bytes[id]``: UTF-8 length of the piece without a leading "▁"; 1 for a byte-fallback piece
  (``<0xAB>``); 0 for control / unknown / unused ids (BOS, ``<unk>``, ...).
- ``has_leading_space[id]``: the piece starts with "▁" (it stands for a space plus text).
- ``is_boundary[id]``: control / unknown / unused ids, and ids beyond the SentencePiece vocab.

bytes(target) = base_bytes[target] + (has_leading_space[target] and not is_boundary[previous token]).
The leading space is not counted right after a boundary (a document's first token follows BOS).
Sums are float64. ``tests/data/test_tokenizer_bytes.py`` proves the tables exact: per validation
document, the sum equals ``len(decoded_text.encode("utf-8"))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import sentencepiece as spm

LN2 = math.log(2.0)


@dataclass(frozen=True)
class ByteLUTs:
    base_bytes: np.ndarray  # int16 [table]
    has_leading_space: np.ndarray  # bool [table]
    is_boundary: np.ndarray  # bool [table]

    @property
    def table_size(self) -> int:
        return int(self.base_bytes.shape[0])

    def to_torch(self, device: Any = "cpu") -> ByteLUTs:
        """The same tables as torch tensors on ``device`` (for evaluation on the accelerator)."""
        import torch

        return ByteLUTs(
            torch.as_tensor(self.base_bytes, dtype=torch.int16, device=device),
            torch.as_tensor(self.has_leading_space, dtype=torch.bool, device=device),
            torch.as_tensor(self.is_boundary, dtype=torch.bool, device=device),
        )


def build_byte_luts(sp: spm.SentencePieceProcessor, vocab_size: int | None = None) -> ByteLUTs:
    """The challenge's tables for ``sp``, sized max(sp vocab, vocab_size); extra ids are boundaries."""
    sp_vocab = int(sp.vocab_size())
    size = max(sp_vocab, vocab_size or 0)
    base = np.zeros(size, dtype=np.int16)
    lead = np.zeros(size, dtype=np.bool_)
    boundary = np.ones(size, dtype=np.bool_)
    for i in range(sp_vocab):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("\u2581"):
            lead[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return ByteLUTs(base, lead, boundary)


def token_bytes(prev_ids: Any, target_ids: Any, luts: ByteLUTs) -> Any:
    """Bytes of each target token given the token before it (numpy arrays or torch tensors alike)."""
    lead = luts.has_leading_space[target_ids] & ~luts.is_boundary[prev_ids]
    base = luts.base_bytes[target_ids]
    if isinstance(base, np.ndarray):
        return base.astype(np.int64) + lead
    return base.long() + lead.long()


def stream_bytes(tokens: np.ndarray, luts: ByteLUTs) -> int:
    """Total bytes of every target in a token stream (position 0 is context only)."""
    tokens = np.asarray(tokens)
    if tokens.size < 2:
        return 0
    return int(token_bytes(tokens[:-1], tokens[1:], luts).sum(dtype=np.float64))


def bits_per_byte(loss_sum_nats: float, num_bytes: float) -> float:
    """bpb = total NLL in bits / total bytes = (mean loss / ln 2) * (tokens / bytes)."""
    if num_bytes <= 0:
        raise ValueError(f"bits_per_byte needs a positive byte count, got {num_bytes}")
    return float(loss_sum_nats) / (LN2 * float(num_bytes))
