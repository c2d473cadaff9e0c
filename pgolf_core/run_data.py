"""What a training run reads before it starts: the training shards, the validation tokens and the
byte source of bpb, each checked with a one-line error naming the file and the key to fix."""

from __future__ import annotations

import numpy as np

from pgolf_core.config import RunConfig
from pgolf_core.data.loader import load_validation_tokens
from pgolf_core.data.shards import list_shards, read_header
from pgolf_core.data.tokenizer import load_tokenizer
from pgolf_core.data.tokenizer_bytes import build_byte_luts
from pgolf_core.eval import load_target_bytes
from pgolf_core.eval.target_bytes import TargetBytes
from pgolf_core.runfolder import RunError


def load_run_data(cfg: RunConfig) -> tuple[list, np.ndarray, TargetBytes]:
    """(training shard paths, validation tokens, target bytes on the CPU) for ``cfg``."""
    dc, mc = cfg.data, cfg.model
    root = dc.root_path()
    sp = load_tokenizer(dc.tokenizer_path())
    if sp.vocab_size() != mc.vocab_size:
        raise RunError(
            f"{dc.tokenizer_path()}: tokenizer vocab {sp.vocab_size()} != model.vocab_size "
            f"{mc.vocab_size}; expected a tokenizer of model.vocab_size pieces (or set model.vocab_size)"
        )
    train_files = list_shards(root / dc.train_pattern)
    if sum(read_header(f).num_tokens for f in train_files) == 0:
        raise RunError(
            f"{root / dc.train_pattern}: all {len(train_files)} training shard(s) hold 0 tokens "
            "(data.train_pattern); expected tokens to train on"
        )
    val_files = list_shards(root / dc.val_pattern)
    try:
        val_tokens = load_validation_tokens(val_files, cfg.eval_seq_len, dc.val_max_tokens, mc.vocab_size)
    except ValueError as e:  # an empty or too short split: name the files (data.val_pattern)
        raise RunError(f"{root / dc.val_pattern}: {e}") from None
    target_bytes = load_target_bytes(  # byte tables, or the CaseOps sidecar (data.caseops)
        dc,
        build_byte_luts(sp, mc.vocab_size),
        val_files,
        seq_len=cfg.eval_seq_len,
        n_tokens=val_tokens.shape[0],
    )
    return train_files, val_tokens, target_bytes
