"""Quantization schemes on a smoke-trained checkpoint: artifact bytes and bpb gap against the baseline.

    .venv/bin/python bench/quant.py                                   # trains params/smoke/train.yaml first
    .venv/bin/python bench/quant.py --checkpoint runs/<id>/checkpoints/final_raw.pt
    .venv/bin/python bench/quant.py --iterations 100 --calib-batches 8

Every row is a real round trip (build_artifact -> bytes -> load_artifact -> strict load -> evaluate on
the validation tokens of the params file). The smoke model (4x128) has no matrix above the baseline's
65,536-element passthrough threshold except the embedding, so the "groups" schemes lower
keep_float_max_numel to 4,096 to quantize the block matrices too; the baseline row keeps the challenge
rule exactly. Copy the printed table into bench/README.md with the date and the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from pgolf_core.config import QuantConfig, QuantGroupConfig, RunConfig, load_config
from pgolf_core.data.loader import load_validation_tokens
from pgolf_core.data.shards import list_shards
from pgolf_core.data.tokenizer import load_tokenizer
from pgolf_core.data.tokenizer_bytes import build_byte_luts
from pgolf_core.dist import DistInfo
from pgolf_core.eval import evaluate_standard
from pgolf_core.quant import collect_hessians, format_gap_table, quant_gap, train_calibration_batches

KEEP = 4096  # smoke matrices are 128x128 .. 128x1024: quantize them all


def g(
    bits: int, clip: str = "percentile", gptq: bool = False, k: float = 12.85, pct: float = 99.99984
) -> QuantGroupConfig:
    return QuantGroupConfig(bits=bits, clip=clip, gptq=gptq, sdclip_k=k, percentile=pct)


def groups(attn: QuantGroupConfig, mlp: QuantGroupConfig, embed: QuantGroupConfig, **kw) -> QuantConfig:
    return QuantConfig(scheme="groups", keep_float_max_numel=KEEP, attn=attn, mlp=mlp, embed=embed, **kw)


def schemes() -> list[tuple[str, QuantConfig]]:
    e8 = g(8)
    out = [("baseline int8+zlib", QuantConfig())]
    out.append(("int8 percentile", groups(g(8), g(8), e8)))
    out.append(("int8 search", groups(g(8, "search"), g(8, "search"), e8)))
    out.append(("int8 sdclip k=20", groups(g(8, "sdclip", k=20.0), g(8, "sdclip", k=20.0), e8)))
    for bits, k in ((6, 12.85), (5, 6.5)):  # (b, k) ~ (b+1, 2k) (records.md D8): same step for int5 at k/2
        out.append((f"int{bits} percentile", groups(g(bits), g(bits), e8)))
        out.append((f"int{bits} search", groups(g(bits, "search"), g(bits, "search"), e8)))
        out.append((f"int{bits} sdclip k={k:g}", groups(g(bits, "sdclip", k=k), g(bits, "sdclip", k=k), e8)))
    # GPTQ on every block matrix and the tied embedding (Hessian from the final-norm output, D9)
    out.append(("GPTQ int6 percentile", groups(g(6, gptq=True), g(6, gptq=True), g(8, gptq=True))))
    gptq = groups(g(6, "sdclip", True), g(6, "sdclip", True), g(8, gptq=True))
    out.append(("GPTQ int6 sdclip k=12.85", gptq))
    lqer = gptq.model_copy(update={"lqer_top_k": 3, "lqer_rank": 4, "lqer_group": 64})
    out.append(("GPTQ int6 sdclip + LQER", lqer))
    out.append(
        (
            "GPTQ int6 sdclip + LQER, auto compressor",
            lqer.model_copy(update={"compressor": "auto", "byte_shuffle": "auto"}),
        )
    )
    return out


def train_checkpoint(params: str, iterations: int | None) -> Path:
    from pgolf_core.train import train

    overrides = ["train.run_id=bench-quant", "train.progress=false"]
    if iterations:
        overrides.append(f"train.iterations={iterations}")
    result = train(load_config(params, overrides))
    return Path(result.run_dir) / "checkpoints" / "final_raw.pt"


def make_evaluator(cfg: RunConfig):
    data = cfg.data
    val = load_validation_tokens(
        list_shards(data.root_path() / data.val_pattern),
        cfg.eval_seq_len,
        data.val_max_tokens,
        cfg.model.vocab_size,
    )
    luts = build_byte_luts(load_tokenizer(data.tokenizer_path()), cfg.model.vocab_size).to_torch("cpu")

    def evaluate(model):
        model.eval()
        return evaluate_standard(
            model.nll,
            val,
            luts,
            seq_len=cfg.eval_seq_len,
            batch_tokens=cfg.eval.batch_tokens,
            dist=DistInfo(),
            device=torch.device("cpu"),
            autocast=False,
        )

    return evaluate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/smoke/train.yaml")
    ap.add_argument("--checkpoint", help="a final_raw.pt; default: train one with --params")
    ap.add_argument("--iterations", type=int, default=None, help="training iterations when training here")
    ap.add_argument("--calib-batches", type=int, default=16, help="training batches for the GPTQ Hessians")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    cfg = load_config(args.params, [f"quant.calib_batches={args.calib_batches}"])
    ckpt = Path(args.checkpoint) if args.checkpoint else train_checkpoint(args.params, args.iterations)
    evaluate = make_evaluator(cfg)

    from pgolf_core.model import build_model
    from pgolf_core.quant.gap import load_weights

    model = build_model(cfg.model, device="cpu")
    model.load_state_dict(load_weights(ckpt))
    hessians = collect_hessians(model, train_calibration_batches(cfg))
    print(
        f"calibration: {hessians.batches} training batches x {cfg.train.train_batch_tokens} tokens, "
        f"{len(hessians)} Hessians in {hessians.seconds:.1f} s",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    rows = quant_gap(ckpt, cfg, schemes(), evaluate=evaluate, hessians=hessians)
    print(
        f"{len(rows)} schemes in {time.perf_counter() - t0:.0f} s; checkpoint {ckpt}; "
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads",
        file=sys.stderr,
    )
    print(format_gap_table(rows, baseline="baseline int8+zlib"))
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
