"""Section ``eval``: sliding-window and TTT evaluation throughput (scored tokens/s) on one GPU.

Through the entry point the pipeline's q_sw / q_ttt stages reach, ``pgolf_core.ttt.run_ttt`` (with TTT
off it is the sliding-window evaluation), on the record models with randomized weights and a synthetic
stream (uniform tokens, a BOS every 200-1600 tokens so that the per-document TTT has documents).
The records' figures are for the whole validation set on 8 GPUs; per GPU they are
``VAL_TOKENS_SP8192 / (seconds x 8)``.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.devcheck import models
from bench.devcheck.models import RECORD_PARAMS, build, load, randomize_weights, vocab_size
from bench.devcheck.runner import Check, Context
from pgolf_core.challenge import WORLD_SIZE
from pgolf_core.data.tokenizer import BOS_ID
from pgolf_core.dist import DistInfo
from pgolf_core.ttt import TTTInputs, run_ttt

# sp8192 validation tokens: 1,238 TTT chunks of 32,768 in #1493's log (an upper bound: the last is partial).
VAL_TOKENS_SP8192 = 1_238 * 32_768
# (config, overrides, scored tokens, seconds on 8xH100 for the whole validation set (low, high), source)
CASES = [
    (
        "sliding, stride 64",
        "record_1493",
        ["ttt.enabled=false"],
        262_144,
        (94.0, 121.0),
        "#1493 quantized_sliding_window eval time",
    ),
    (
        "chunked SGD TTT (3 epochs, 32k chunks)",
        "record_1493",
        [],
        131_072,
        (318.0, 368.0),
        "#1493 legal TTT eval time",
    ),
    (
        "phased TTT (LoRA rank 80, 3 phases)",
        "record_1855",
        # #1855's global passes start after 2,500 of 50,000 documents (5%); 8 of this stream's ~150
        ["ttt.phased_prefix_docs=8"],
        131_072,
        (455.0, 509.0),
        "#1855 TTT eval time (timer around the TTT pass)",
    ),
]
CASE_NEED_S = 8.0
WARM_TOKENS = 8_192


def doc_stream(vocab: int, n_targets: int, seq_len: int, seed: int) -> np.ndarray:
    """uint16 stream of ``k * seq_len + 1`` tokens (as load_validation_tokens returns), BOS-separated
    documents of uniform tokens."""
    rng = np.random.default_rng(seed)
    n = (n_targets // seq_len) * seq_len + 1
    tokens = rng.integers(BOS_ID + 1, vocab, size=n).astype(np.uint16)
    starts = np.cumsum(rng.integers(200, 1600, size=n // 200 + 1))
    tokens[0] = BOS_ID
    tokens[starts[starts < n]] = BOS_ID
    return tokens


def eval_rate(model, cfg, tokens: np.ndarray, device: torch.device) -> tuple[int, float, dict]:
    """(scored tokens, seconds, info) of one run_ttt pass, single process, tokens only (no byte tables)."""
    inputs = TTTInputs.from_config(model, tokens, None, cfg, dist=DistInfo(), device=device)
    result, info = run_ttt(inputs)
    return result.tokens, result.seconds, info


def section(ctx: Context) -> None:
    device = models.device()
    table = ctx.table(
        "evaluation throughput on one GPU (eager, bf16 autocast, randomized weights)",
        [
            "evaluation",
            "config",
            "scored tokens",
            "seconds",
            "tokens/s",
            "record tokens/s per GPU (8xH100)",
            "source",
        ],
        note=f"Record rates: {VAL_TOKENS_SP8192:,} validation tokens / (eval seconds x {WORLD_SIZE}).",
    )
    loaded: dict[str, torch.nn.Module] = {}
    for label, name, overrides, n, (lo, hi), source in CASES:

        def one(label=label, name=name, overrides=overrides, n=n, lo=lo, hi=hi, source=source) -> None:
            cfg = load(RECORD_PARAMS[name], overrides)
            if name not in loaded:
                loaded.clear()  # one model on the GPU at a time
                model = build(cfg, device)
                randomize_weights(model, seed=2)
                model.set_loops(True)  # the records evaluate with the loops on
                loaded[name] = model.eval()
            model = loaded[name]
            seq = cfg.eval_seq_len
            eval_rate(
                model, cfg, doc_stream(vocab_size(model), WARM_TOKENS, seq, 0), device
            )  # kernels, allocator
            tokens, seconds, info = eval_rate(model, cfg, doc_stream(vocab_size(model), n, seq, 1), device)
            ctx.add(
                Check(f"{label}: scored every target", float(tokens), float(n), tokens == (n // seq) * seq)
            )
            rate = tokens / seconds
            ref = f"{VAL_TOKENS_SP8192 / (hi * WORLD_SIZE):,.0f}-{VAL_TOKENS_SP8192 / (lo * WORLD_SIZE):,.0f}"
            ctx.row(table, [label, name, tokens, seconds, rate, ref, source])
            ctx.data(
                label,
                {
                    "tokens": tokens,
                    "seconds": seconds,
                    "info": {k: v for k, v in info.items() if isinstance(v, (int, float, str))},
                },
            )

        ctx.step(label, one, need_s=CASE_NEED_S)
