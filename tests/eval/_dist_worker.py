"""Worker for the 2-process evaluation tests: importable by spawned children (pytest does not collect it)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pgolf_core.config.eval_sections import TiltConfig
from pgolf_core.dist import DistInfo
from pgolf_core.eval import evaluate_sliding
from pgolf_core.ttt import TTTInputs, chunked_ttt, doc_lora_ttt
from pgolf_core.ttt.common import EvalSpec
from tests.eval.helpers import doc_stream, luts, random_stream, repetitive_stream, tiny_model, ttt_cfg
from tests.gloo import gloo_group

SLIDING = {"seq_len": 16, "stride": 5, "batch_seqs": 3}
CHUNK_TTT = ttt_cfg(mode="chunk", chunk_tokens=96, epochs=2, lr=0.05, batch_seqs=3)
LORA_TTT = ttt_cfg(mode="lora", lora_chunk_tokens=8, lora_window=16, lora_batch_docs=2, lora_lr=0.02)
SPEC = EvalSpec(seq_len=16, stride=8, batch_seqs=4)
DOC_LENGTHS = [30, 11, 47, 5, 26]


def run_all(dist_info: DistInfo) -> dict[str, np.ndarray]:
    """Sliding evaluation, chunked TTT and document LoRA TTT: loss, bytes and the NLL stream of each."""
    cpu = torch.device("cpu")
    out = {}
    res = evaluate_sliding(
        tiny_model(),
        random_stream(211, seed=7),
        luts(),
        dist=dist_info,
        device=cpu,
        return_streams=True,
        **SLIDING,
    )
    out["sliding"] = res
    chunk = TTTInputs(
        tiny_model(), repetitive_stream(400), luts(), CHUNK_TTT, SPEC, dist_info, cpu, return_streams=True
    )
    out["chunk"] = chunked_ttt(chunk)
    lora = TTTInputs(
        tiny_model(), doc_stream(DOC_LENGTHS), luts(), LORA_TTT, SPEC, dist_info, cpu, return_streams=True
    )
    out["lora"] = doc_lora_ttt(lora)
    # the tilt on the TTT's scored loss (stage q_ttt_tilt): every rank builds the hints, tilts its share
    tilt = TiltConfig(enabled=True, order=4)
    out["chunk_tilt"] = chunked_ttt(replace(chunk, tilt=tilt))
    out["lora_tilt"] = doc_lora_ttt(replace(lora, tilt=tilt))
    return {
        f"{k}_{f}": np.asarray(v)
        for k, r in out.items()
        for f, v in (
            ("loss", r.loss),
            ("bpb", r.bpb),
            ("tokens", r.tokens),
            ("bytes", r.bytes),
            ("nll", r.nll),
            ("committed", r.committed),
        )
    }


def worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    with gloo_group(rank, world_size, port):
        np.savez(Path(out_dir) / f"rank{rank}.npz", **run_all(DistInfo(rank, world_size, rank)))
