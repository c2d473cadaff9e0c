"""Where bpb's denominator comes from: the number of original UTF-8 bytes each scored target stands for.

Two sources behind one interface, ``TargetBytes``:

- ``LutTargetBytes`` ("luts"): the tokenizer byte tables (``data.tokenizer_bytes``), as the challenge's
  ``eval_val`` counts a plain tokenizer: a target's bytes depend on it and on the token before it.
- ``SidecarTargetBytes`` ("sidecar"): the validation byte sidecar of CaseOps data
  (``data.sidecar``), one entry per stream position. The tables would count every case marker as the
  3 bytes of its private-use character, which no original text holds: #2138 divided by those
  transformed bytes (+8.95%) and reported 0.979556 for what was really 1.067219.

Every evaluation path asks the same question, "the bytes of these targets", passing each target's
previous token, the target itself and its stream position; each source reads what it needs. The sums
stay float64 and are all-reduced with the loss sums, so both sources reduce exactly alike.

    tb = load_target_bytes(cfg.data, luts, val_files, seq_len=cfg.eval_seq_len)   # once per session
    evaluate_sliding(model, val, tb, ...)          # where a ByteLUTs was passed (still accepted)
    tb.total(val)                                  # B over every target of the stream
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pgolf_core.config import DataConfig
from pgolf_core.data.loader import load_validation_bytes
from pgolf_core.data.prepare import caseops_enabled
from pgolf_core.data.tokenizer_bytes import ByteLUTs, token_bytes

LUTS, SIDECAR = "luts", "sidecar"
BYTES_SOURCES = (LUTS, SIDECAR)


def _on(t: torch.Tensor, device: Any) -> bool:
    d = torch.device(device)
    return t.device.type == d.type and (d.index is None or t.device.index == d.index)


class TargetBytes:
    """Bytes of scored targets. ``kind``: "luts" or "sidecar" (what stage records report)."""

    kind: str
    needs_positions: bool  # whether ``targets`` reads the positions (the batched paths skip them otherwise)

    def to(self, device: Any) -> TargetBytes:
        """The same source with its tables on ``device`` (for the batched evaluation)."""
        raise NotImplementedError

    def targets(self, prev_ids: Any, target_ids: Any, positions: Any) -> Any:
        """int64 bytes per target (numpy arrays or torch tensors alike, of equal length)."""
        raise NotImplementedError

    def stream(self, tokens: np.ndarray) -> np.ndarray:
        """int16 [N]: bytes of the target at each position of ``tokens`` (0 at position 0)."""
        raise NotImplementedError

    def total(self, tokens: np.ndarray) -> int:
        """B over every target of ``tokens`` (positions 1..N-1)."""
        return int(self.stream(tokens).sum(dtype=np.float64))


class LutTargetBytes(TargetBytes):
    """The tokenizer byte tables; the numbers are exactly ``tokenizer_bytes.token_bytes``'s."""

    kind = LUTS
    needs_positions = False

    def __init__(self, luts: ByteLUTs):
        self.luts = luts

    def to(self, device: Any) -> LutTargetBytes:
        if isinstance(self.luts.base_bytes, torch.Tensor) and _on(self.luts.base_bytes, device):
            return self
        return LutTargetBytes(self._host_luts().to_torch(device))

    def _host_luts(self) -> ByteLUTs:
        if not isinstance(self.luts.base_bytes, torch.Tensor):
            return self.luts
        tables = (self.luts.base_bytes, self.luts.has_leading_space, self.luts.is_boundary)
        return ByteLUTs(*(t.cpu().numpy() for t in tables))

    def targets(self, prev_ids: Any, target_ids: Any, positions: Any = None) -> Any:
        return token_bytes(prev_ids, target_ids, self.luts)

    def stream(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens).astype(np.int64)
        out = np.zeros(tokens.shape[0], dtype=np.int16)
        out[1:] = token_bytes(tokens[:-1], tokens[1:], self._host_luts())
        return out


class SidecarTargetBytes(TargetBytes):
    """The CaseOps byte sidecar of the validation stream (``loader.load_validation_bytes``): the target
    at stream position p stands for ``val_bytes[p]`` original bytes, whatever its tokens.

    Positions index the session's validation stream, so the tokens evaluated must be that stream or a
    prefix of it (every evaluator and TTT variant addresses targets by their position in it).
    """

    kind = SIDECAR
    needs_positions = True

    def __init__(self, val_bytes: np.ndarray, device: Any = None):
        host = np.asarray(val_bytes)
        if host.ndim != 1:
            raise ValueError(f"a byte sidecar is one entry per token; got shape {host.shape}")
        if host.size and int(host.max()) > np.iinfo(np.int16).max:
            raise ValueError(f"byte sidecar entry {int(host.max())} does not fit int16 (one token's bytes)")
        self.host = host.astype(np.int16)
        self.table = None if device is None else torch.as_tensor(self.host, device=device)

    def to(self, device: Any) -> SidecarTargetBytes:
        if self.table is not None and _on(self.table, device):
            return self
        out = SidecarTargetBytes.__new__(SidecarTargetBytes)
        out.host, out.table = self.host, torch.as_tensor(self.host, device=device)
        return out

    def _check(self, n: int) -> None:
        if n > self.host.shape[0]:
            raise ValueError(
                f"the stream has {n:,} tokens but the byte sidecar {self.host.shape[0]:,} entries; "
                "evaluate the validation stream the sidecar was loaded with (or a prefix of it)"
            )

    def targets(self, prev_ids: Any, target_ids: Any, positions: Any) -> Any:
        if positions is None:
            raise ValueError("sidecar byte counts need the targets' stream positions")
        if isinstance(positions, torch.Tensor):
            table = self.table if self.table is not None else torch.as_tensor(self.host)
            if table.device != positions.device:
                table = table.to(positions.device)
            return table[positions].long()
        return self.host[np.asarray(positions)].astype(np.int64)

    def stream(self, tokens: np.ndarray) -> np.ndarray:
        n = int(np.asarray(tokens).shape[0])
        self._check(n)
        out = self.host[:n].copy()
        if n:
            out[0] = 0  # position 0 is context only (BOS's entry is 0 anyway)
        return out


def as_target_bytes(source: TargetBytes | ByteLUTs | None) -> TargetBytes | None:
    """``source`` as a ``TargetBytes``: byte tables are wrapped (every caller that passes ``ByteLUTs``
    keeps its numbers), None stays None (score tokens only, no bytes)."""
    if source is None or isinstance(source, TargetBytes):
        return source
    if isinstance(source, ByteLUTs):
        return LutTargetBytes(source)
    raise TypeError(f"byte counts must come from ByteLUTs or a TargetBytes, got {type(source).__name__}")


def bytes_source(source: TargetBytes | ByteLUTs | None) -> str:
    """The source's kind ("luts" / "sidecar"), or "none" when nothing counts bytes."""
    tb = as_target_bytes(source)
    return "none" if tb is None else tb.kind


def load_target_bytes(
    dc: DataConfig,
    luts: ByteLUTs,
    val_files: Sequence[str | os.PathLike],
    *,
    seq_len: int,
    n_tokens: int | None = None,
) -> TargetBytes:
    """The byte source a data config asks for: the sidecar of ``val_files`` when ``dc.caseops``
    (aligned with ``load_validation_tokens(val_files, seq_len, dc.val_max_tokens)``), else ``luts``.

    ``n_tokens``: the length of the stream loaded beside it, checked equal (a misaligned sidecar would
    silently shift every count).
    """
    if not caseops_enabled(dc):
        return LutTargetBytes(luts)
    val_bytes = load_validation_bytes(val_files, seq_len, dc.val_max_tokens)
    if n_tokens is not None and val_bytes.shape[0] != n_tokens:
        raise ValueError(
            f"byte sidecar of {dc.root_path()}: {val_bytes.shape[0]:,} entries for a {n_tokens:,}-token "
            "validation stream"
        )
    return SidecarTargetBytes(val_bytes)
