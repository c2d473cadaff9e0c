"""The slow, obvious byte count: decode the scored tokens and count UTF-8 bytes (compliance T10).

It is the reference the byte tables of ``tokenizer_bytes`` are checked against, so it shares no code
with them.
"""

from __future__ import annotations

import numpy as np


def recount_bytes(tokens: np.ndarray, sp, *, bos_id: int = 1) -> int:
    """UTF-8 bytes of the text the target tokens stand for, by decoding, per document.

    Documents are the runs between BOS tokens. Control, unknown and unused ids (and ids beyond the
    tokenizer) count 0 bytes, as the challenge counts them; a decode restarts after each, which drops
    the next piece's leading space exactly as the byte tables do (tests/data/test_tokenizer_bytes.py).
    Position 0 is context only: if the stream does not start with BOS, its bytes are left out.

    A byte-fallback piece (``<0xE2>``) stands for one byte. Decoding a run of them that is not valid
    UTF-8 (a stream cut inside a multi-byte character) gives one U+FFFD, 3 bytes, per byte, so each
    run of byte pieces counts the bytes it stands for: the run decoded alone is replaced by its length.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    n_sp = int(sp.vocab_size())
    special = np.ones(max(n_sp, int(tokens.max(initial=0)) + 1), dtype=bool)
    for i in range(n_sp):
        special[i] = bool(sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))
    is_special = special[tokens]
    byte_piece = np.zeros(special.size, dtype=bool)
    for i in range(n_sp):
        byte_piece[i] = bool(sp.is_byte(i))

    def decoded(ids: np.ndarray) -> int:
        return len(sp.decode(ids.tolist()).encode("utf-8"))

    def run_bytes(run: np.ndarray) -> int:
        if not run.size:
            return 0
        total = decoded(run)
        flags = np.concatenate([[0], byte_piece[run].astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(flags))  # starts and ends of the runs of byte pieces
        for a, b in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
            total += (b - a) - decoded(run[a:b])  # 0 for valid UTF-8; removes U+FFFD inflation
        return total

    total = 0
    cuts = np.flatnonzero(is_special)
    starts = np.concatenate([[0], cuts + 1])
    ends = np.concatenate([cuts, [tokens.size]])
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if e <= s:
            continue
        if s == 0:  # the stream's first run: token 0 is not a target
            total += run_bytes(tokens[0:e]) - run_bytes(tokens[0:1])
        else:
            total += run_bytes(tokens[s:e])
    return total
