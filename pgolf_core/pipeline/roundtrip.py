"""What a stage evaluates: a checkpoint's weights, or the artifact round trip's (quantize, compress,
write artifact.bin, read it back, dequantize) together with the checks that belong to the artifact."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.distributed as tdist

from pgolf_core.checkpoint import load_checkpoint
from pgolf_core.compliance import check_artifact_size, check_data_access
from pgolf_core.model import build_model
from pgolf_core.pipeline.session import Session
from pgolf_core.quant import build_artifact, load_artifact
from pgolf_core.stages import Verdict


@dataclass(frozen=True)
class StageWeights:
    """The weights a stage evaluates. For the artifact round trip (``quantize_weights``) also its size
    verdict T7, the data tripwire of the quantization (T6 quant) and the byte accounting; a checkpoint's
    weights (``pre``, ``ema``) have none of these."""

    state: dict
    t7: Verdict | None = None
    t6_quant: Verdict | None = None
    accounting: dict = field(default_factory=dict)  # model / code / total bytes, margin, compressor

    @property
    def artifact_bytes(self) -> int | None:
        return self.accounting.get("total_bytes")


def quantize_weights(ctx: Session, state: dict) -> StageWeights:
    """Quantize + compress + write artifact.bin, read it back: the dequantized weights with T7, T6 quant
    and the accounting. All ranks call it; rank 0 writes the file, every rank reads it back."""
    hessians = None
    h_path = ctx.train_dir / "checkpoints" / "hessians.pt"
    if h_path.is_file():
        hessians = load_checkpoint(h_path)
    structure = build_model(ctx.cfg.model, device="cpu")
    box = []
    t6 = check_data_access(
        lambda: box.append(build_artifact(state, ctx.cfg.quant, model=structure, hessians=hessians)),
        phase="quant",
    )
    if not box:
        raise RuntimeError(f"quantization aborted by the data tripwire: {t6.reason}")
    art = box[0]
    path = ctx.out_dir / "artifact.bin"
    if ctx.dist.is_main:
        art.save(path)
    if ctx.dist.distributed and tdist.is_initialized():
        tdist.barrier()
    q_state = load_artifact(path)  # the round trip goes through the file, as a reader would
    t7 = check_artifact_size(model_bytes=art.model_bytes, code_bytes=art.code_bytes, cap=art.cap)
    accounting = {
        "model_bytes": art.model_bytes,
        "code_bytes": art.code_bytes,
        "total_bytes": art.total_bytes,
        "margin": art.margin,
        "over_cap": art.over_cap,
        "compressor": art.compressor,
        "candidates": art.details.get("candidates", {}),
    }
    t6_quant = Verdict("T6 quant", t6.passed, t6.reason, t6.measured, t6.limit)
    return StageWeights(q_state, t7=t7, t6_quant=t6_quant, accounting=accounting)
