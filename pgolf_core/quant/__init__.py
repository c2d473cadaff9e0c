"""Post-training quantization, compression and the 16,000,000-byte artifact (records.md D).

    art = build_artifact(model, cfg.quant, hessians=None)   # -> Artifact (blob, bytes, margin, over_cap)
    state = load_artifact(art.blob)                          # dequantized state dict; never unpickles
    hessians = collect_hessians(model, calibration_batches(cfg, model))
    set_qat(model, True, cfg.quant)                          # fake quantization (STE), works compiled
    rows = quant_gap(ckpt, cfg, [("int6 gptq", qcfg)], evaluate=fn, calib_batches=batches)

Modules: classify (tensor -> group by module type / role), schemes (baseline int8, per-row intN, clip
rules), gptq (Hessians, GPTQ), lqer, qat, quantize (a whole state dict), compress, format (the
container), artifact (build / load / accounting), calib (calibration batches), gap (the table).
"""

from pgolf_core.quant.artifact import (
    Artifact,
    ArtifactOverCapWarning,
    build_artifact,
    code_bytes,
    load_artifact,
)
from pgolf_core.quant.calib import calibration_batches, self_generated_batches, train_calibration_batches
from pgolf_core.quant.classify import GROUPS, classify
from pgolf_core.quant.format import ArtifactError
from pgolf_core.quant.gap import GapRow, format_gap_table, quant_gap
from pgolf_core.quant.gptq import Hessians, collect_hessians, gptq_quantize
from pgolf_core.quant.qat import qat_due, set_qat
from pgolf_core.quant.quantize import dequantized_state, quantize_state

__all__ = [
    "GROUPS",
    "Artifact",
    "ArtifactError",
    "ArtifactOverCapWarning",
    "GapRow",
    "Hessians",
    "build_artifact",
    "calibration_batches",
    "classify",
    "code_bytes",
    "collect_hessians",
    "dequantized_state",
    "format_gap_table",
    "gptq_quantize",
    "load_artifact",
    "qat_due",
    "quant_gap",
    "quantize_state",
    "self_generated_batches",
    "set_qat",
    "train_calibration_batches",
]
