"""Token streams over shard globs, the distributed training loader, and the validation stream.

Same semantics as the challenge baseline's loader (``train_gpt.py``): one sequential stream over the
sorted shards that wraps around forever; each call takes ``world_size * (local_tokens + 1)`` contiguous
tokens and rank r keeps span r, so ranks see disjoint data and together cover the stream exactly.
x and y are the span shifted by one, reshaped to (local_tokens / seq_len, seq_len).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pgolf_core.data.shards import ShardError, read_header, read_shard


class TokenStream:
    """Reads shards in order and wraps around forever. Deterministic; no shuffling, no workers.

    ``state_dict()`` / ``load_state_dict()`` record the position so a resumed run continues exactly.
    """

    def __init__(self, files: Sequence[str | os.PathLike], vocab_size: int | None = None):
        self.files = [Path(f) for f in files]
        if not self.files:
            raise FileNotFoundError("TokenStream needs at least one shard")
        if sum(read_header(f).num_tokens for f in self.files) == 0:
            names = ", ".join(str(f) for f in self.files)
            raise ShardError(
                f"every shard is empty (0 tokens in {len(self.files)} file(s): {names}); re-export the data"
            )
        self.vocab_size = vocab_size
        self.file_idx, self.pos, self.epoch = 0, 0, 0
        self._tokens = read_shard(self.files[0], vocab_size)

    def _advance_file(self) -> None:
        self.file_idx = (self.file_idx + 1) % len(self.files)
        if self.file_idx == 0:
            self.epoch += 1
        self._tokens = read_shard(self.files[self.file_idx], self.vocab_size)
        self.pos = 0

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` tokens (int64), crossing shard boundaries and wrapping at the end."""
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            avail = self._tokens.shape[0] - self.pos
            if avail <= 0:
                self._advance_file()
                continue
            k = min(n - filled, avail)
            out[filled : filled + k] = self._tokens[self.pos : self.pos + k]
            self.pos += k
            filled += k
        return out

    def skip(self, n: int) -> None:
        """Advance ``n`` tokens without copying them (the other ranks' spans)."""
        while n > 0:
            avail = self._tokens.shape[0] - self.pos
            if avail <= 0:
                self._advance_file()
                continue
            k = min(n, avail)
            self.pos += k
            n -= k

    def state_dict(self) -> dict:
        return {
            "file_idx": self.file_idx,
            "pos": self.pos,
            "epoch": self.epoch,
            "files": [f.name for f in self.files],
        }

    def load_state_dict(self, state: dict) -> None:
        names = [f.name for f in self.files]
        if state.get("files", names) != names:
            raise ValueError(f"loader state was saved over shards {state['files']}, but this run has {names}")
        self.file_idx, self.epoch = int(state["file_idx"]), int(state["epoch"])
        self._tokens = read_shard(self.files[self.file_idx], self.vocab_size)
        self.pos = int(state["pos"])


class DistributedTokenLoader:
    """Each call consumes one contiguous chunk of the shared stream; rank r keeps the r-th span.

    Every rank builds the same stream and skips the other ranks' spans, so no communication is needed.
    """

    def __init__(
        self, files: Sequence[str | os.PathLike], rank: int, world_size: int, vocab_size: int | None = None
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.rank, self.world_size = rank, world_size
        self.stream = TokenStream(files, vocab_size)

    def next_batch(
        self, global_tokens: int, seq_len: int, grad_accum_steps: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 tensors of shape (local_tokens // seq_len, seq_len) for this rank's micro-step."""
        denom = self.world_size * grad_accum_steps
        if global_tokens % denom or (global_tokens // denom) % seq_len:
            raise ValueError(
                f"train_batch_tokens={global_tokens} must split into world_size={self.world_size} x "
                f"grad_accum_steps={grad_accum_steps} micro-batches of whole {seq_len}-token sequences"
            )
        span = global_tokens // denom + 1
        self.stream.skip(self.rank * span)
        local = torch.from_numpy(self.stream.take(span))
        self.stream.skip((self.world_size - 1 - self.rank) * span)
        return local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len)

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


def _validation_length(
    n_tokens: int, seq_len: int, max_tokens: int, files: Sequence[str | os.PathLike]
) -> int:
    """Tokens kept of a validation stream of ``n_tokens``: ``k * seq_len + 1``, k >= 1."""
    usable = ((n_tokens - 1) // seq_len) * seq_len
    if max_tokens:
        usable = min(usable, (max_tokens // seq_len) * seq_len)
    if usable <= 0:
        names = ", ".join(str(f) for f in files)
        what = "is empty" if n_tokens == 0 else f"is too short for one {seq_len}-token window"
        raise ShardError(
            f"validation split ({n_tokens} tokens in {len(files)} shard(s)) {what}"
            + (f" within val_max_tokens={max_tokens}" if max_tokens and n_tokens else "")
            + f": {names}"
        )
    return usable + 1


def load_validation_tokens(
    files: Sequence[str | os.PathLike], seq_len: int, max_tokens: int = 0, vocab_size: int | None = None
) -> np.ndarray:
    """All validation shards concatenated, truncated to a whole number of ``seq_len`` windows plus one.

    ``max_tokens`` > 0 caps the number of scored targets (smoke runs); 0 keeps the whole split, as the
    challenge does. Returns uint16 with ``k * seq_len + 1`` tokens.
    """
    if not files:
        raise FileNotFoundError("no validation shards given")
    tokens = np.concatenate([np.asarray(read_shard(f, vocab_size)) for f in files])
    return tokens[: _validation_length(tokens.size, seq_len, max_tokens, files)]


def load_validation_bytes(
    files: Sequence[str | os.PathLike], seq_len: int, max_tokens: int = 0
) -> np.ndarray:
    """The byte sidecar of CaseOps validation data, aligned with ``load_validation_tokens(files, ...)``:
    entry i is the number of original UTF-8 bytes token i stands for (uint16, same length).

    ``files`` are the validation token shards; each one's ``fineweb_val_bytes_*.bin`` must exist beside
    it with the same token count. Score with ``sidecar.target_byte_counts``.
    """
    from pgolf_core.data.sidecar import SidecarError, sidecar_path

    if not files:
        raise FileNotFoundError("no validation shards given")
    parts = []
    for f in files:
        side = sidecar_path(f)
        if not side.is_file():
            raise SidecarError(
                f"{side}: byte sidecar of {Path(f).name} not found; CaseOps bpb needs it (export with "
                "--caseops or fetch --variant sp8192_caseops)"
            )
        n_tok, n_side = read_header(f).num_tokens, read_header(side).num_tokens
        if n_side != n_tok:
            raise SidecarError(f"{side}: {n_side:,} byte entries, but {Path(f).name} has {n_tok:,} tokens")
        parts.append(np.asarray(read_shard(side)))
    counts = np.concatenate(parts)
    return counts[: _validation_length(counts.size, seq_len, max_tokens, files)]
