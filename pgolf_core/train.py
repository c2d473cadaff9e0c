"""The training loop, as a function (``train(cfg)``) and as a torchrun entry point.

    python -m pgolf_core.train params/smoke/train.yaml [--set train.iterations=50]
    torchrun --standalone --nproc_per_node=8 -m pgolf_core.train params/h100x8/baseline.yaml

A run writes ``<train.run_dir>/<run_id>/`` (pgolf_core.runfolder): the resolved config, the manifest,
metrics, the log, checkpoints (pgolf_core.checkpoint: last.pt for resume, final_raw.pt and final_ema.pt)
and result.json with the final stages (pre, and ema when EMA is on). A caller that evaluates those
stages itself (the notebooks run the pipeline next) passes ``final_stages=False`` /
``--no-final-stages`` and skips them here. One run at a time holds the folder (run.lock); however a run
ends, run.json says how, and a NaN or infinite loss, weight or final result stops it as ``diverged``
(pgolf_core.handoff has the end of a run, pgolf_core.launch the process entry and its one-line errors).

Semantics follow the challenge baseline (records/.../2026-03-17_NaiveBaseline, kept by every record):
a wallclock cap that excludes in-loop validation and is agreed across ranks (MAX), LR warmdown by
iterations (wallclock-aware under a cap) or by training fraction with a floor, Muon momentum warmup,
compile-warmup steps whose state is restored afterwards, EMA after every step. Gradients are averaged by
DDP and clipped after averaging (the DDP records' semantics; the banked parallel-Muon records from #549
on clip each rank's un-reduced gradient). Killing a run and starting it again resumes from the last
checkpoint; on CPU the final weights equal an uninterrupted run's. What changes during a run (depth
recurrence, late QAT, the sequence-length schedule of #2014 with its LR re-warm, the calibration reserve
taken off the cap) is pgolf_core.train_schedule's.
"""

from __future__ import annotations

import copy
import gc
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from pgolf_core.checkpoint import (
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
    weights_finite,
)
from pgolf_core.config import RunConfig, to_yaml
from pgolf_core.data.loader import DistributedTokenLoader
from pgolf_core.dist import (
    DistInfo,
    any_rank,
    broadcast_str,
    destroy_process_group,
    dist_info_from_env,
    grad_accum_steps,
    init_process_group,
    leave_together,
    resolve_device,
    seed_everything,
    wrap_ddp,
)
from pgolf_core.eval import EvalResult, evaluate_standard, nll_with_temperature
from pgolf_core.handoff import finish_run
from pgolf_core.model import build_model, count_parameters
from pgolf_core.model.challenge_weights import embed_storage_dtype, set_embed_storage_
from pgolf_core.optim import EMA, build_optimizers, muon_momentum_at
from pgolf_core.optim.banked import exclude_from_ddp, use_banked_muon
from pgolf_core.run_data import load_run_data
from pgolf_core.runfolder import RunFiles, RunResult, TrainingDiverged, environment
from pgolf_core.train_schedule import RunSchedule, needs_hessians


class Trainer:
    """One rank's training run. ``final_stages=False`` leaves the final pre / ema evaluation to the caller."""

    def __init__(self, cfg: RunConfig, dist: DistInfo, *, final_stages: bool = True):
        self.cfg, self.dist, self.final_stages = cfg, dist, final_stages
        tc = cfg.train
        self.device = resolve_device(tc.device, dist)
        init_process_group(dist, self.device)
        self.grad_accum = grad_accum_steps(tc.grad_accum_steps, dist)
        self.autocast = tc.autocast and self.device.type == "cuda"
        run_id = broadcast_str(tc.run_id or time.strftime("%Y%m%d-%H%M%S") + f"-s{tc.seed}", dist)
        self.files = RunFiles(Path(tc.run_dir), run_id, dist.is_main)
        self.run_id = run_id
        self.lock_note, self.orphans = self.files.take(lambda refused: broadcast_str(refused, dist))
        try:
            self._setup()
        except BaseException:
            self.files.unlock()
            raise

    def _setup(self) -> None:
        cfg, tc, dist = self.cfg, self.cfg.train, self.dist
        seed_everything(tc.seed)
        self._load_data()
        self.model = build_model(cfg.model).to(self.device)
        # tok_emb in bf16 on CUDA under autocast, as the challenge stores it (train.tok_emb_bf16).
        set_embed_storage_(self.model, embed_storage_dtype(self.device, self.autocast, tc.tok_emb_bf16))
        self.opt = build_optimizers(
            self.model, cfg.optim, tie_embeddings=cfg.model.tie_embeddings, fused=self.device.type == "cuda"
        )
        use_banked_muon(self.opt, cfg.optim)
        self.ema = EMA(self.model, tc.ema_decay) if tc.ema_decay > 0 else None
        self.loader = DistributedTokenLoader(
            self.train_files, dist.rank, dist.world_size, cfg.model.vocab_size
        )
        self.gptq = needs_hessians(cfg)
        # GPTQ calibration runs on training data after the loop and counts against the training budget
        # (#1394 on; the #1868 compliance rerun reserved 8 s): the schedule's cap is shortened by the
        # reserve. The schedule also installs QAT's switch, before compiling.
        self.schedule = RunSchedule(cfg, self.model, dist, self.gptq, self.files.log)
        self._wrap_model()
        self.step, self.train_time, self.stop_after = 0, 0.0, None
        self.calib_seconds, self.ckpt_step, self.last_val = 0.0, None, None

    # ----- setup -----
    def _load_data(self) -> None:
        self.train_files, self.val_tokens, target_bytes = load_run_data(self.cfg)
        self.target_bytes = target_bytes.to(self.device)

    def _compiles(self) -> bool:
        # CPU inductor would compile for minutes to save nothing; the tests force it on to rehearse the
        # CUDA wrapping (DDP around the compiled module, BankedMuon's ``_orig_mod.`` exclusions) on gloo.
        return self.cfg.train.compile and self.device.type == "cuda"

    def _wrap_model(self) -> None:
        base = self.model
        use_compile = self._compiles()
        self.forward = torch.compile(base, dynamic=False) if use_compile else base
        self.nll = nll_with_temperature(base, self.cfg.eval.temperature)
        if use_compile:
            self.nll = torch.compile(self.nll, dynamic=False)
        banked = self.opt.banked_params()
        if banked and self.dist.distributed:  # BankedMuon reduce-scatters their gradients itself
            exclude_from_ddp(self.forward, banked)
        self.forward = wrap_ddp(self.forward, self.dist, self.device)

    # ----- state -----
    def checkpoint(self) -> None:
        """last.pt, of finite weights only: a diverging run keeps its last good state to go back to."""
        tensors = [*self.model.state_dict().values(), *(self.ema.shadow.values() if self.ema else [])]
        (nonfinite,) = any_rank([not weights_finite(tensors)], self.dist, self.device)
        if nonfinite:
            raise TrainingDiverged(f"non-finite weights after step {self.step}; stopping. {self.kept()}")
        state = training_state(self)  # on every rank: BankedMuon's state_dict all-gathers its momentum
        if self.dist.is_main:
            save_checkpoint(self.files.ckpt_dir / "last.pt", state)
        self.ckpt_step = self.step

    def kept(self) -> str:
        """Which checkpoint a diverged run leaves to go back to."""
        if self.ckpt_step is None:
            return "no checkpoint was written yet"
        return f"the last finite checkpoint is {self.files.ckpt_dir / 'last.pt'} (step {self.ckpt_step})"

    # ----- the steps -----
    def _micro_batches(self):
        tc = self.cfg.train
        for micro in range(self.grad_accum):  # rows of the schedule's active length
            x, y = self.loader.next_batch(tc.train_batch_tokens, self.schedule.rows, self.grad_accum)
            yield micro, x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _forward_backward(self) -> torch.Tensor:
        """Accumulated, averaged training loss of one optimizer step (gradients left in .grad)."""
        total = torch.zeros((), device=self.device)
        for micro, x, y in self._micro_batches():
            if self.dist.distributed:  # all-reduce gradients on the last micro-batch only
                self.forward.require_backward_grad_sync = micro == self.grad_accum - 1
            with torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else nullcontext():
                loss = self.forward(x, y)
            (loss / self.grad_accum).backward()
            total += loss.detach()
        return total / self.grad_accum

    def _optimizer_step(self) -> None:
        # Banked Muon's gradients are each rank's own, summed over the micro-batches: the clip (or else
        # the step) reduce-scatters them once, after the last one. Both paths clip the averaged gradient.
        if self.cfg.optim.grad_clip_norm > 0:
            self.opt.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema:
            self.ema.update(self.model)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def warmup(self) -> None:
        """Compile-warmup steps for every (length, loops) shape the run will train with, then the initial
        state restored (as every record does; #2014 warmed its four shapes): not an LR warmup."""
        n = self.cfg.train.warmup_steps
        if n <= 0:
            return
        model_state = copy.deepcopy(self.model.state_dict())
        opt_state = copy.deepcopy(self.opt.state_dict())
        shapes = self.schedule.warmup_shapes()
        for s, (length, loops_on) in enumerate(shapes):
            self.schedule.use_shape(length, loops_on)
            for i in range(n):
                self._forward_backward()
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                shape = f" (seq_len {length}, loops {'on' if loops_on else 'off'})" if len(shapes) > 1 else ""
                self.files.log(f"warmup_step:{s * n + i + 1}/{len(shapes) * n}{shape}")
        self.schedule.use_shape(self.schedule.length, False)
        self.model.load_state_dict(model_state)
        self.opt.load_state_dict(opt_state)
        self.loader = DistributedTokenLoader(
            self.train_files, self.dist.rank, self.dist.world_size, self.cfg.model.vocab_size
        )

    def validate(self) -> EvalResult:
        self.model.eval()
        with self.schedule.configured():  # varlen segments capped as configured, not at the stage's
            result = evaluate_standard(
                self.nll,
                self.val_tokens,
                self.target_bytes,
                seq_len=self.cfg.eval_seq_len,
                batch_tokens=self.cfg.eval.batch_tokens,
                dist=self.dist,
                device=self.device,
                autocast=self.autocast,
            )
        self.model.train()
        return result

    def train_step(self, elapsed: float) -> tuple[float, float]:
        """One optimizer step; returns (train loss, lr multiplier). Raises TrainingDiverged on NaN/inf."""
        mult = self.schedule.before_step(self.step, elapsed)  # loops, seq length, QAT, LR (+ re-warm)
        self.opt.set_lr_multiplier(mult)
        self.opt.set_muon_momentum(muon_momentum_at(self.step, self.cfg.optim))
        loss = self._forward_backward()
        cap = self.schedule.train.max_wallclock_seconds
        nonfinite, capped = any_rank(
            [not bool(torch.isfinite(loss)), cap > 0 and elapsed >= cap], self.dist, self.device
        )
        if nonfinite:
            raise TrainingDiverged(
                f"non-finite training loss ({loss.item()}) at step {self.step + 1}; stopping. {self.kept()}"
            )
        self._optimizer_step()
        self.step += 1
        if capped and self.stop_after is None:
            self.stop_after = self.step
        return float(loss.item()), mult

    # ----- the run -----
    def _describe(self) -> None:
        """The manifest's fixed facts: what ran where, with which model and optimizer routing."""
        self.files.describe(
            self.run_id,
            **environment(self.device),
            world_size=self.dist.world_size,
            grad_accum_steps=self.grad_accum,
            attn_backend=self.model.attn_backend,
            params=count_parameters(self.model),
            optimizer_groups=self.opt.param_names_by_group(),
            calib_reserve_seconds=self.schedule.reserve,
        )

    def _maybe_resume(self) -> bool:
        last = self.files.ckpt_dir / "last.pt"
        if not (self.cfg.train.resume and last.exists()):
            return False
        restore_training_state(self, load_checkpoint(last), last)
        self.ckpt_step = self.step
        self.files.truncate_metrics(self.step)
        self.files.log(f"resumed from {last} at step {self.step} (train time {self.train_time:.1f} s)")
        return True

    def _log_start(self) -> None:
        tc = self.cfg.train
        m, log = self.model, self.files.log
        log(f"run {self.run_id}: {count_parameters(m):,} parameters, attention backend {m.attn_backend}")
        log(f"world_size:{self.dist.world_size} grad_accum_steps:{self.grad_accum} device:{self.device}")
        log(
            f"train_batch_tokens:{tc.train_batch_tokens} train_seq_len:{tc.train_seq_len} "
            f"iterations:{tc.iterations} max_wallclock_seconds:{tc.max_wallclock_seconds} "
            f"val_tokens:{self.val_tokens.size - 1}"
        )
        if self.schedule.reserve:
            cap = self.schedule.train.max_wallclock_seconds
            how = self.schedule.reserve_how
            log(f"gptq calibration reserve {self.schedule.reserve:.2f}s ({how}): training cap {cap:.2f}s")
        if tc.seq_schedule:
            stages = ", ".join(f"{st.seq_len} until {st.until:g}" for st in tc.seq_schedule)
            log(f"seq_schedule ({tc.seq_schedule_mode}): {stages}")
        log(self.opt.groups_table())

    def run(self) -> RunResult:
        """The whole run; however it ends, run.json says how (completed, diverged, failed, interrupted)."""
        files, started = self.files, False
        try:
            files.write_config(to_yaml(self.cfg))
            resumed = self._maybe_resume()
            if not resumed:
                files.reset()
            self._describe()
            files.status("running", resumed_from_step=self.step if resumed else None)
            started = True
            for note in [self.lock_note, *(f"removed orphan temporary file {p}" for p in self.orphans)]:
                if note:
                    files.log(note)
            self._log_start()
            if not resumed:
                self.warmup()
            self._loop()
            return finish_run(self)
        except BaseException as e:
            files.ended(e, started, steps=self.step)
            raise

    def _loop(self) -> None:
        tc, files = self.cfg.train, self.files
        bar = files.progress(tc.iterations, self.step, tc.progress)
        self._sync()
        t0 = time.perf_counter()
        while True:
            last = self.step >= tc.iterations or (
                self.stop_after is not None and self.step >= self.stop_after
            )
            if last or (tc.val_loss_every and self.step % tc.val_loss_every == 0):
                self._sync()
                self.train_time += time.perf_counter() - t0
                res = self.last_val = self.validate()
                files.val_event(self.step, tc.iterations, res, self.train_time)
                self._sync()
                t0 = time.perf_counter()
            if last:
                break
            loss, mult = self.train_step(self.train_time + time.perf_counter() - t0)
            elapsed = self.train_time + time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if tc.train_log_every and (self.step <= 10 or self.step % tc.train_log_every == 0):
                files.train_event(
                    self.step, tc.iterations, loss, mult, self.step * tc.train_batch_tokens, elapsed
                )
            if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                self.train_time += time.perf_counter() - t0
                self.checkpoint()
                t0 = time.perf_counter()
        bar.close()
        self.schedule.end()
        if self.stop_after is not None and self.step < tc.iterations:
            files.log(
                f"stopping_early: wallclock cap at step {self.step}/{tc.iterations}, "
                f"train_time {self.train_time:.1f}s"
            )


def train(cfg: RunConfig, dist: DistInfo | None = None, *, final_stages: bool = True) -> RunResult:
    """Train per ``cfg`` in this process (one rank of a torchrun job, or alone). Callable from notebooks.

    ``final_stages=False``: skip the final pre / ema evaluation (result.json then has no stages), for a
    caller that runs the pipeline's stages on the saved weights anyway.
    """
    dist = dist or dist_info_from_env()
    try:
        trainer = Trainer(cfg, dist, final_stages=final_stages)
        try:
            result = trainer.run()
        finally:
            trainer.files.unlock()
        # DDP's reducer holds the gloo group: freed after the group was destroyed and a peer had left, it
        # joined gloo threads forever (a 2-rank run hung at exit). Free it first, then leave together.
        trainer.forward = trainer = None
        gc.collect()
        leave_together(dist)
        return result
    finally:
        destroy_process_group(dist)


def main(argv: list[str] | None = None) -> int:
    """``python -m pgolf_core.train``: the process entry lives in pgolf_core.launch."""
    from pgolf_core.launch import train_main

    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
