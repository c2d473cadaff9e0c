"""Post-training quantization, compression and the 16,000,000-byte artifact (records.md D).

    art = build_artifact(model, cfg.quant, hessians=None)   # -> Artifact (blob, bytes, margin, over_cap)
    state = load_artifact(art.blob)                          # dequantized state dict; never unpickles
    hessians = collect_hessians(model, calibration_batches(cfg, model))
    set_qat(model, True, cfg.quant)                          # fake quantization (STE), works compiled
    rows = quant_gap(ckpt, cfg, [("int6 gptq", qcfg)], evaluate=fn, calib_batches=batches)

Modules: classify (tensor -> group by module type / role), schemes (baseline int8, per-row intN, clip
rules), gptq (Hessians, GPTQ), awq (AWQ-lite column blocks), lqer, qat, quantize (a whole state dict),
compress (codecs, lrzip detection), pergroup (role streams, row chains), header (prefix, header,
checks), format (the container), prune (+-1 pruning to a byte target), artifact (build / load /
accounting), calib (calibration batches, the reserve), gap (the table).
"""

from pgolf_core.quant.artifact import (
    Artifact,
    ArtifactOverCapWarning,
    build_artifact,
    code_bytes,
    load_artifact,
)
from pgolf_core.quant.calib import (
    CalibTiming,
    calibration_batches,
    measure_calibration,
    reserve_seconds,
    self_generated_batches,
    train_calibration_batches,
)
from pgolf_core.quant.classify import GROUPS, classify
from pgolf_core.quant.compress import lrzip_status
from pgolf_core.quant.format import ArtifactError
from pgolf_core.quant.gap import GapRow, format_gap_table, quant_gap
from pgolf_core.quant.gptq import Hessians, collect_hessians, gptq_quantize
from pgolf_core.quant.prune import PruneResult
from pgolf_core.quant.qat import qat_due, set_qat
from pgolf_core.quant.quantize import dequantized_state, quantize_state

__all__ = [
    "GROUPS",
    "Artifact",
    "ArtifactError",
    "ArtifactOverCapWarning",
    "CalibTiming",
    "GapRow",
    "Hessians",
    "PruneResult",
    "build_artifact",
    "calibration_batches",
    "classify",
    "code_bytes",
    "collect_hessians",
    "dequantized_state",
    "format_gap_table",
    "gptq_quantize",
    "load_artifact",
    "lrzip_status",
    "measure_calibration",
    "qat_due",
    "quant_gap",
    "quantize_state",
    "reserve_seconds",
    "self_generated_batches",
    "set_qat",
    "train_calibration_batches",
]
