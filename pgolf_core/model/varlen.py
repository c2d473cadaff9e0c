"""Document boundaries inside packed rows, and document-masked ("varlen") attention over them (#1530).

A training row is a slice of the token stream, so it holds the tail of one document, whole documents and
the head of another. ``packed_segments`` cuts each row into segments: a new segment starts at the row
start, at every BOS and every ``max_doc_len`` tokens into a longer document (#1530 cut at 2048). The
segments of all rows are listed as ``cu_seqlens``, the start offsets in the flattened B*T tokens
followed by the total, the layout of the flash-attention varlen kernels. That vector is padded to a
multiple of ``CU_BUCKET`` entries by repeating the total (zero-length segments), so a compiled graph
sees a handful of shapes instead of one per segment count (#1530/#1855 warm up 64/128/192/256).

``segment_mask`` is the dense equivalent, the block-diagonal causal mask of the same segments: the CPU
path and the reference the flash path is tested against.

Shapes: B batch, T time, N cu_seqlens entries (a multiple of CU_BUCKET), S real segments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pgolf_core.data.tokenizer import BOS_ID

CU_BUCKET = 64


@dataclass(frozen=True)
class Segments:
    """Where the segments of one forward's rows begin.

    starts_BT: True at the first token of a segment (row start, BOS, max_doc_len cut), or only at BOS
        tokens when attention is not document-masked (the shift features' view, ``bos_segments``).
    cu_seqlens: int32 (N,) segment start offsets in the flattened rows, then the total repeated up to a
        multiple of CU_BUCKET; None without varlen attention.
    max_seqlen: the longest segment (0 without varlen attention).
    """

    starts_BT: Tensor
    cu_seqlens: Tensor | None = None
    max_seqlen: int = 0

    @property
    def varlen(self) -> bool:
        return self.cu_seqlens is not None


def segment_starts(ids_BT: Tensor, max_doc_len: int, bos_id: int = BOS_ID) -> Tensor:
    """(B, T) bool: row starts, BOS tokens, and every ``max_doc_len``-th token after either."""
    B, T = ids_BT.shape
    doc_start_BT = ids_BT == bos_id
    doc_start_BT[:, 0] = True
    t_BT = torch.arange(T, device=ids_BT.device).expand(B, T)
    # The start of the document each token is in: a running maximum over the start positions.
    first_BT = torch.cummax(torch.where(doc_start_BT, t_BT, 0), dim=1).values
    return (t_BT - first_BT) % max_doc_len == 0


@torch.compiler.disable  # data-dependent sizes (nonzero, the longest segment): computed eagerly
def packed_segments(ids_BT: Tensor, max_doc_len: int, bucket: int = CU_BUCKET) -> Segments:
    """The segments of packed rows ``ids_BT`` for document-masked attention."""
    B, T = ids_BT.shape
    starts_BT = segment_starts(ids_BT, max_doc_len)
    starts_S = starts_BT.flatten().nonzero().squeeze(1)
    total = B * T
    n = -(-(starts_S.numel() + 1) // bucket) * bucket
    cu_N = torch.full((n,), total, dtype=torch.int32, device=ids_BT.device)
    cu_N[: starts_S.numel()] = starts_S.to(torch.int32)
    max_seqlen = int(torch.diff(cu_N).max().item())
    return Segments(starts_BT, cu_N, max_seqlen)


def bos_segments(ids_BT: Tensor, bos_id: int = BOS_ID) -> Segments:
    """Document starts only (BOS tokens), for the shift features when attention spans documents."""
    return Segments(ids_BT == bos_id)


def segment_ids(cu_N: Tensor, batch: int, seq_len: int) -> Tensor:
    """(B, T) index of the segment each token belongs to (zero-length padding segments own no token)."""
    positions = torch.arange(batch * seq_len, device=cu_N.device, dtype=cu_N.dtype)
    return (torch.searchsorted(cu_N, positions, right=True) - 1).view(batch, seq_len)


def segment_mask(cu_N: Tensor, batch: int, seq_len: int, window: int = 0) -> Tensor:
    """(B, 1, T, T) bool, True where query i may see key j: same segment, j <= i, and (with a window)
    i - j < window; the mask flash varlen attention applies implicitly."""
    seg_BT = segment_ids(cu_N, batch, seq_len)
    i_T1 = torch.arange(seq_len, device=cu_N.device)[:, None]
    j_1T = torch.arange(seq_len, device=cu_N.device)[None, :]
    allowed_TT = j_1T <= i_T1
    if window:
        allowed_TT = allowed_TT & (i_T1 - j_1T < window)
    return ((seg_BT[:, :, None] == seg_BT[:, None, :]) & allowed_TT).unsqueeze(1)
