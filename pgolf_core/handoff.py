"""The end of a training run: what it hands to the pipeline and to the user.

After the loop (pgolf_core.train): the final checkpoint, the final raw weights (``final_raw.pt``), the
EMA weights (``final_ema.pt``) when EMA is on, the GPTQ Hessians (``hessians.pt``) collected inside the
training budget, and the final stages ``pre`` / ``ema`` evaluated with the standard evaluation, in
result.json and run.json. A caller that evaluates the same stages next (the notebooks run the pipeline)
skips them here (``Trainer.final_stages`` False); the weights and Hessians are written either way.
"""

from __future__ import annotations

import copy
import math
import time
from typing import TYPE_CHECKING

from pgolf_core.checkpoint import save_checkpoint
from pgolf_core.model import count_parameters
from pgolf_core.quant import calibration_batches, collect_hessians, set_qat
from pgolf_core.runfolder import RunResult, TrainingDiverged

if TYPE_CHECKING:
    from pgolf_core.train import Trainer


def final_stage(t: Trainer, name: str, stages: dict) -> None:
    """Evaluate the model's current weights as stage ``name`` into ``stages`` (unless left to the caller)."""
    t.model.set_loops(True)  # evaluation runs with the loops on, as the looping records do (no-op without)
    if not t.final_stages:
        return
    res = t.validate()
    t.files.stage_event(name, t.step, res)
    stages[name] = res.as_dict()


def calibrate(t: Trainer) -> None:
    """GPTQ Hessians from training batches (or self-generated text), timed into the training budget."""
    if t.cfg.quant.qat:
        set_qat(t.model, False, t.cfg.quant)  # calibrate on the plain weights' activations
    t0 = time.perf_counter()
    hessians = collect_hessians(t.model, calibration_batches(t.cfg, t.model, t.dist), t.dist)
    t.calib_seconds = time.perf_counter() - t0
    if t.dist.is_main:
        save_checkpoint(t.files.ckpt_dir / "hessians.pt", dict(hessians))
    total = t.train_time + t.calib_seconds
    t.files.log(
        f"gptq calibration: {len(hessians)} Hessians from {hessians.batches} batches in "
        f"{t.calib_seconds:.1f}s; training + calibration = {total:.1f}s"
    )


def require_finite(t: Trainer, results: dict[str, dict]) -> None:
    """A run whose final numbers are NaN or infinite diverged (on its last steps): never "completed"."""
    bad = [
        f"{name} val_bpb {r['bpb']}" for name, r in results.items() if not math.isfinite(r["bpb"] + r["loss"])
    ]
    if bad:
        raise TrainingDiverged(f"non-finite final result after step {t.step} ({', '.join(bad)}); {t.kept()}")


def finish_run(t: Trainer) -> RunResult:
    """Checkpoint, final weights, final stages, Hessians, result.json and the completed manifest."""
    files, tc = t.files, t.cfg.train
    t.checkpoint()  # raises TrainingDiverged on non-finite weights
    if t.last_val is not None:
        require_finite(t, {"last validation": {"bpb": t.last_val.bpb, "loss": t.last_val.loss}})
    stages: dict[str, dict] = {}
    final_stage(t, "pre", stages)
    if t.dist.is_main:
        save_checkpoint(files.ckpt_dir / "final_raw.pt", t.model.state_dict())
    raw = copy.deepcopy(t.model.state_dict()) if t.ema else None
    if t.ema:
        t.ema.copy_to(t.model)
        final_stage(t, "ema", stages)
        if t.dist.is_main:
            save_checkpoint(files.ckpt_dir / "final_ema.pt", t.model.state_dict())
    if t.gptq:
        calibrate(t)  # on the weights the artifact will hold (EMA when on, as the records)
    if raw is not None:
        t.model.load_state_dict(raw)
    require_finite(t, stages)
    result = RunResult(
        run_id=t.run_id,
        run_dir=str(files.root),
        status="completed",
        steps=t.step,
        train_seconds=t.train_time + t.calib_seconds,
        stopped_early=t.step < tc.iterations,
        params=count_parameters(t.model),
        attn_backend=t.model.attn_backend,
        stages=stages,
    )
    files.result(result)
    files.status(
        "completed", steps=t.step, train_seconds=t.train_time, calib_seconds=t.calib_seconds, stages=stages
    )
    return result
