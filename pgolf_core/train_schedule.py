"""What changes during a training run: depth recurrence, late QAT, the sequence length, the LR re-warm.

``RunSchedule`` is asked once before every optimizer step (``before_step``) and flips what is due:

- depth recurrence (model.residual.loops) once the training fraction reaches ``enable_frac``;
- the progressive context (train.seq_schedule, #2014: 1024 until 10 %, 2048 until 70 %, 3072 after;
  3-seed 1.05759, -0.00096 vs #1953, no per-lever ablation published). The active length is the FIRST
  stage whose ``until`` >= progress, so thresholds are inclusive: at progress exactly 0.1 the run is
  still in the 1024 stage. Progress is elapsed / (cap - calibration reserve) in wallclock mode, step /
  iterations in steps mode, and only moves forward (on the clock, every rank takes the stage of the
  rank furthest on, so all train one shape). Rows always hold train_batch_tokens tokens, so a
  stage of length L trains tokens / L sequences. With varlen attention the rows keep
  train.train_seq_len tokens and L is the document-segment cap instead (#2014's loader did the same);
- after each length change the LR multiplier is additionally ramped (k + 1) / N over the N =
  train.seq_change_warmup_steps steps that follow (#2014: 32), since the attention statistics of the
  longer context start cold;
- late QAT (#549/#1019/#1512) once the warmdown multiplier falls below quant.qat_start_lr_mult. It
  reads the multiplier WITHOUT the re-warm: a ramp's 1/32 must not switch QAT on at the first change.

Also here, because it sets the cap everything above is measured against: the GPTQ calibration reserve
taken off the training cap (``calib_reserve``), a number or measured ("auto", pgolf_core.quant.calib).
The switches' state goes into the resumable checkpoint (``state_dict``) so a killed run resumes bit
for bit, and ``warmup_shapes`` lists every (length, loops) shape the run will compile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

from pgolf_core.config import RunConfig
from pgolf_core.config.sections import SeqStage
from pgolf_core.dist import DistInfo, any_rank
from pgolf_core.optim import lr_multiplier
from pgolf_core.quant import qat_due, set_qat
from pgolf_core.quant.calib import measure_calibration, reserve_seconds
from pgolf_core.quant.classify import QUANT_GROUPS
from pgolf_core.runfolder import RunError
from pgolf_core.runtime import model_device


def stage_at(stages: list[SeqStage], progress: float) -> int:
    """Index of the first stage whose ``until`` >= ``progress`` (the last one past the end)."""
    for i, st in enumerate(stages):
        if progress <= st.until:
            return i
    return len(stages) - 1


def rewarm_factor(steps_since_change: int | None, n: int) -> float:
    """(k + 1) / n for the k-th step (from 0) at a new length, 1 from step n on, or without a change."""
    if steps_since_change is None or n <= 0 or steps_since_change >= n:
        return 1.0
    return (steps_since_change + 1) / n


def needs_hessians(cfg: RunConfig) -> bool:
    """GPTQ calibration runs after training: for a GPTQ group, or for AWQ-lite, which lives inside the
    GPTQ solve and reads the same Hessians (its activation saliency)."""
    q = cfg.quant
    return q.scheme == "groups" and (any(getattr(q, g).gptq for g in QUANT_GROUPS) or q.awq_top_k > 0)


def calib_reserve(cfg: RunConfig, model: nn.Module, dist: DistInfo, enabled: bool) -> tuple[float, str]:
    """(seconds taken off the training cap for GPTQ calibration, how they were sized).

    Calibration on training data counts toward the 600 s (the #1868 and #1945 reruns; #2135 reserved
    0.5 s for a 6.9 s pass). "auto" times a Hessian pass of the calibration batch shape on this machine
    before training (every rank, the slowest wins), through the same modules calibration will use (QAT's
    switch installed). Nothing is reserved without GPTQ or without a cap.
    """
    q, tc = cfg.quant, cfg.train
    if not enabled or tc.max_wallclock_seconds <= 0:
        return 0.0, "none"
    if q.calib_reserve_seconds != "auto":
        return float(q.calib_reserve_seconds), "quant.calib_reserve_seconds"
    if q.calib_source != "train":
        try:
            reserve_seconds(q)  # refuses auto for self-generated text, in its own words
        except ValueError as e:
            raise RunError(str(e)) from None
    rows = tc.train_batch_tokens // (dist.world_size * tc.train_seq_len)
    timing = measure_calibration(model, max(rows, 1), tc.train_seq_len, cfg.model.vocab_size, dist)
    how = f"auto: {timing.per_batch_s:.3f} s/batch x {q.calib_batches} + {timing.fixed_s:.3f} s measured"
    return reserve_seconds(q, timing), how


class RunSchedule:
    """The switches of one run. ``train`` is train config with the effective cap (cap minus reserve)."""

    def __init__(
        self, cfg: RunConfig, model: nn.Module, dist: DistInfo, gptq: bool, log: Callable[[str], None]
    ):
        tc = cfg.train
        if cfg.quant.qat:
            set_qat(model, False, cfg.quant)  # install the switch before compiling; late QAT flips a buffer
        reserve, self.reserve_how = calib_reserve(cfg, model, dist, gptq)
        if tc.max_wallclock_seconds > 0 and reserve >= tc.max_wallclock_seconds:
            raise RunError(
                f"quant.calib_reserve_seconds ({reserve:.1f} s) leaves no training time under "
                f"train.max_wallclock_seconds ({tc.max_wallclock_seconds}); expected a reserve below the cap"
            )
        self.cfg, self.model, self.dist, self.log = cfg, model, dist, log
        self._set_reserve(reserve)
        self.stages = list(tc.seq_schedule)
        self.varlen = cfg.model.attention.varlen.enabled
        self.qat_on = False
        self.stage, self.changed_at = 0, None
        self.rows = tc.train_seq_len
        self.use_shape(self.length, False)

    def _set_reserve(self, reserve: float) -> None:
        self.reserve = reserve
        cap = self.cfg.train.max_wallclock_seconds
        self.train = self.cfg.train.model_copy(update={"max_wallclock_seconds": max(cap - reserve, 0.0)})

    # ----- the active shape -----
    @property
    def length(self) -> int:
        """The active length: the stage's (row length, or segment cap under varlen)."""
        return self.stages[self.stage].seq_len if self.stages else self.cfg.train.train_seq_len

    def use_shape(self, length: int, loops_on: bool) -> None:
        """Rows of ``length`` tokens (varlen: segments capped at it), loops on or off."""
        self.model.set_loops(loops_on)
        if not self.stages:
            return
        if not self.varlen:
            self.rows = length
            return
        self.model.set_max_doc_len(length)

    @contextmanager
    def configured(self) -> Iterator[None]:
        """Inside: segments capped as the config builds the model (evaluation, calibration; the
        pipeline rebuilds the model from the config and scores it so). Rows are the loader's concern."""
        if not (self.varlen and self.stages):
            yield
            return
        active = self.model.max_doc_len
        self.model.set_max_doc_len(self.cfg.model.attention.varlen.max_doc_len)
        try:
            yield
        finally:
            self.model.set_max_doc_len(active)

    def end(self) -> None:
        """After the loop: the model as configured, for the final stages, calibration and export."""
        if self.varlen and self.stages:
            self.model.set_max_doc_len(self.cfg.model.attention.varlen.max_doc_len)

    def warmup_shapes(self) -> list[tuple[int, bool]]:
        """Every (length, loops on) the run will train with, in the order it reaches them."""
        loops = self.cfg.model.residual.loops
        lengths = [st.seq_len for st in self.stages] or [self.length]
        if not loops.count:
            return [(n, False) for n in lengths]
        tc, frac = self.train, loops.enable_frac
        # loops follow the training fraction (wallclock under a cap, else steps); the stages follow their
        # mode: on different clocks either loops state may meet any stage
        capped = tc.max_wallclock_seconds > 0
        same_clock = not self.stages or (tc.seq_schedule_mode == "wallclock") == capped
        bounds = [st.until for st in self.stages] or [1.0]
        out, lo = [], 0.0
        for n, hi in zip(lengths, bounds):
            out += [(n, False)] if not same_clock or lo < frac else []
            out += [(n, True)] if not same_clock or hi >= frac else []
            lo = hi
        return out

    # ----- once per step -----
    def fraction(self, step: int, elapsed: float) -> float:
        """Training fraction: elapsed / effective cap under a cap, else step / iterations."""
        tc = self.train
        if tc.max_wallclock_seconds > 0:
            return elapsed / tc.max_wallclock_seconds
        return step / max(tc.iterations, 1)

    def progress(self, step: int, elapsed: float) -> float:
        """The sequence schedule's progress (train.seq_schedule_mode)."""
        if self.train.seq_schedule_mode == "wallclock":
            return self.fraction(step, elapsed)  # the config refuses wallclock mode without a cap
        return step / max(self.train.iterations, 1)

    def before_step(self, step: int, elapsed: float) -> float:
        """Flip what is due before optimizer step ``step`` (steps done so far); returns the LR multiplier."""
        loops = self.cfg.model.residual.loops
        frac = self.fraction(step, elapsed)
        if loops.count and not self.model.loops_on and frac >= loops.enable_frac:
            self.model.set_loops(True)
            self.log(f"step:{step} depth recurrence on (training fraction {frac:.3f})")
        if self.stages:
            p = self.progress(step, elapsed)
            new = stage_at(self.stages, p)
            if self.train.seq_schedule_mode == "wallclock" and self.dist.distributed:
                # each rank reads its own clock: the furthest rank's stage, so all train the same shape
                due = any_rank(
                    [i <= new for i in range(len(self.stages))], self.dist, model_device(self.model)
                )
                new = max(i for i, d in enumerate(due) if d)
            if new > self.stage:
                old = self.length
                self.stage, self.changed_at = new, step
                self.use_shape(self.length, self.model.loops_on)
                self.log(f"step:{step} seq_len {old} -> {self.length} (progress {p:.3f})")
        mult = lr_multiplier(step, elapsed, self.train)
        q = self.cfg.quant
        if not self.qat_on and qat_due(q, mult):
            set_qat(self.model, True, q)  # a buffer write: takes effect in the compiled graph too
            self.qat_on = True
            self.log(f"step:{step} QAT on (lr multiplier {mult:.3f} < {q.qat_start_lr_mult})")
        since = None if self.changed_at is None else step - self.changed_at
        return mult * rewarm_factor(since, self.train.seq_change_warmup_steps)

    # ----- resume -----
    def state_dict(self) -> dict:
        return {
            "loops_on": self.model.loops_on,
            "qat_on": self.qat_on,
            "seq_stage": self.stage,
            "seq_changed_at": self.changed_at,
            "calib_reserve_seconds": self.reserve,
        }

    def load_state_dict(self, state: dict) -> None:
        """Back to a checkpoint's switches; a measured reserve keeps the cap the run started with."""
        if "calib_reserve_seconds" in state:
            self._set_reserve(float(state["calib_reserve_seconds"]))
        self.stage, self.changed_at = int(state.get("seq_stage", 0)), state.get("seq_changed_at")
        self.use_shape(self.length, bool(state["loops_on"]))
        if state.get("qat_on"):
            set_qat(self.model, True, self.cfg.quant)
            self.qat_on = True
