"""The training loop, as a function (``train(cfg)``) and as a torchrun entry point.

    python -m pgolf_core.train params/smoke/train.yaml [--set train.iterations=50]
    torchrun --standalone --nproc_per_node=8 -m pgolf_core.train params/h100x8/baseline.yaml

A run writes ``<train.run_dir>/<run_id>/`` (pgolf_core.runfolder): the resolved config, the manifest,
metrics, the log, checkpoints (pgolf_core.checkpoint: last.pt for resume, final_raw.pt and final_ema.pt)
and result.json with the final stages (pre, and ema when EMA is on). A caller that evaluates those
stages itself (the notebooks run the pipeline next) passes ``final_stages=False`` /
``--no-final-stages`` and skips them here.

Semantics follow the challenge baseline (records/.../2026-03-17_NaiveBaseline, kept by every record):
a wallclock cap that excludes in-loop validation and is agreed across ranks (MAX), LR warmdown by
iterations (wallclock-aware under a cap) or by training fraction with a floor, Muon momentum warmup,
compile-warmup steps whose state is restored afterwards, EMA after every step. Gradients are averaged by
DDP and clipped after averaging (the DDP records' semantics; the banked parallel-Muon records from #549
on clip each rank's un-reduced gradient). Killing a run and starting it again resumes from the last
checkpoint; on CPU the final weights equal an uninterrupted run's.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from pgolf_core.challenge import WORLD_SIZE
from pgolf_core.checkpoint import load_checkpoint, save_checkpoint
from pgolf_core.config import RunConfig, load_config, to_yaml
from pgolf_core.data.loader import DistributedTokenLoader, load_validation_tokens
from pgolf_core.data.shards import list_shards
from pgolf_core.data.tokenizer import load_tokenizer
from pgolf_core.data.tokenizer_bytes import build_byte_luts
from pgolf_core.dist import (
    DistInfo,
    any_rank,
    broadcast_str,
    destroy_process_group,
    dist_info_from_env,
    init_process_group,
    resolve_device,
    seed_everything,
)
from pgolf_core.evaluate import EvalResult, evaluate_standard, nll_with_temperature
from pgolf_core.handoff import finish_run
from pgolf_core.model import build_model, count_parameters
from pgolf_core.optim import EMA, build_optimizers, lr_multiplier, muon_momentum_at
from pgolf_core.quant import qat_due, set_qat
from pgolf_core.quant.classify import QUANT_GROUPS
from pgolf_core.runfolder import RunFiles, RunResult, environment


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------------


class Trainer:
    """One rank's training run. ``final_stages=False`` leaves the final pre / ema evaluation to the caller."""

    def __init__(self, cfg: RunConfig, dist: DistInfo, *, final_stages: bool = True):
        self.cfg, self.dist, self.final_stages = cfg, dist, final_stages
        tc = cfg.train
        self.device = resolve_device(tc.device, dist)
        init_process_group(dist, self.device)
        if tc.grad_accum_steps:
            self.grad_accum = tc.grad_accum_steps
        elif WORLD_SIZE % dist.world_size == 0:
            # the scored run's global batch in WORLD_SIZE micro-batches, whatever this machine's world size
            self.grad_accum = WORLD_SIZE // dist.world_size
        else:
            raise ValueError(
                f"WORLD_SIZE={dist.world_size} does not divide {WORLD_SIZE}; "
                "set train.grad_accum_steps explicitly"
            )
        self.autocast = tc.autocast and self.device.type == "cuda"
        run_id = broadcast_str(tc.run_id or time.strftime("%Y%m%d-%H%M%S") + f"-s{tc.seed}", dist)
        self.files = RunFiles(Path(tc.run_dir) / run_id, dist.is_main)
        self.run_id = run_id
        seed_everything(tc.seed)
        self._load_data()
        self.model = build_model(cfg.model).to(self.device)
        self.opt = build_optimizers(
            self.model, cfg.optim, tie_embeddings=cfg.model.tie_embeddings, fused=self.device.type == "cuda"
        )
        self.ema = EMA(self.model, tc.ema_decay) if tc.ema_decay > 0 else None
        self.loader = DistributedTokenLoader(
            self.train_files, dist.rank, dist.world_size, cfg.model.vocab_size
        )
        q = cfg.quant
        self.gptq = q.scheme == "groups" and any(getattr(q, g).gptq for g in QUANT_GROUPS)
        # GPTQ calibration runs on training data after the loop and counts against the training budget
        # (#1394 on; the #1868 compliance rerun reserved 8 s): the loop's cap is shortened by the reserve.
        reserve = q.calib_reserve_seconds if self.gptq and tc.max_wallclock_seconds > 0 else 0.0
        self.schedule = tc.model_copy(
            update={"max_wallclock_seconds": max(tc.max_wallclock_seconds - reserve, 0.0)}
        )
        if q.qat:
            set_qat(self.model, False, q)  # install the switch before compiling; late QAT flips a buffer
        self.qat_on = False
        self._wrap_model()
        self.step, self.train_time, self.stop_after = 0, 0.0, None
        self.calib_seconds = 0.0

    # ----- setup -----
    def _load_data(self) -> None:
        dc, mc = self.cfg.data, self.cfg.model
        root = dc.root_path()
        sp = load_tokenizer(dc.tokenizer_path())
        if sp.vocab_size() != mc.vocab_size:
            raise ValueError(
                f"{dc.tokenizer_path()}: tokenizer vocab {sp.vocab_size()} != model.vocab_size {mc.vocab_size}"
            )
        self.luts = build_byte_luts(sp, mc.vocab_size).to_torch(self.device)
        self.train_files = list_shards(root / dc.train_pattern)
        val_files = list_shards(root / dc.val_pattern)
        self.val_tokens = load_validation_tokens(
            val_files, self.cfg.eval_seq_len, dc.val_max_tokens, mc.vocab_size
        )

    def _wrap_model(self) -> None:
        base = self.model
        use_compile = self.cfg.train.compile and self.device.type == "cuda"
        self.forward = torch.compile(base, dynamic=False) if use_compile else base
        self.nll = nll_with_temperature(base, self.cfg.eval.temperature)
        if use_compile:
            self.nll = torch.compile(self.nll, dynamic=False)
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = DDP(self.forward, device_ids=ids, broadcast_buffers=False)

    # ----- state -----
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "train_time": self.train_time,
            "stop_after": self.stop_after,
            "looping": self.model.looping,
            "qat_on": self.qat_on,
            "model": self.model.state_dict(),
            "optim": self.opt.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "loader": self.loader.state_dict(),
            "config": to_yaml(self.cfg),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["config"] != to_yaml(self.cfg):
            raise ValueError(
                f"{self.files.ckpt_dir / 'last.pt'} was written by a different config; "
                "use a new train.run_id or set train.resume false"
            )
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optim"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        self.loader.load_state_dict(state["loader"])
        self.model.set_looping(state["looping"])
        if state.get("qat_on"):
            set_qat(self.model, True, self.cfg.quant)
            self.qat_on = True
        self.step, self.train_time, self.stop_after = state["step"], state["train_time"], state["stop_after"]

    def checkpoint(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.files.ckpt_dir / "last.pt", self.state_dict())

    # ----- the steps -----
    def _micro_batches(self):
        tc = self.cfg.train
        for micro in range(self.grad_accum):
            x, y = self.loader.next_batch(tc.train_batch_tokens, tc.train_seq_len, self.grad_accum)
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
        if self.cfg.optim.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema:
            self.ema.update(self.model)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def training_fraction(self, elapsed: float) -> float:
        tc = self.schedule
        if tc.max_wallclock_seconds > 0:
            return elapsed / tc.max_wallclock_seconds
        return self.step / max(tc.iterations, 1)

    def warmup(self) -> None:
        """Run compile-warmup steps, then restore the initial state (as every record does): not an LR warmup."""
        n = self.cfg.train.warmup_steps
        if n <= 0:
            return
        model_state = copy.deepcopy(self.model.state_dict())
        opt_state = copy.deepcopy(self.opt.state_dict())
        for i in range(n):
            self._forward_backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.files.log(f"warmup_step:{i + 1}/{n}")
        self.model.load_state_dict(model_state)
        self.opt.load_state_dict(opt_state)
        self.loader = DistributedTokenLoader(
            self.train_files, self.dist.rank, self.dist.world_size, self.cfg.model.vocab_size
        )

    def validate(self) -> EvalResult:
        self.model.eval()
        result = evaluate_standard(
            self.nll,
            self.val_tokens,
            self.luts,
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
        cfg = self.cfg
        if (
            cfg.model.num_loops
            and not self.model.looping
            and self.training_fraction(elapsed) >= cfg.model.loop_enable_frac
        ):
            self.model.set_looping(True)
            self.files.log(
                f"step:{self.step} depth recurrence on (training fraction {self.training_fraction(elapsed):.3f})"
            )
        mult = lr_multiplier(self.step, elapsed, self.schedule)
        self.opt.set_lr_multiplier(mult)
        if not self.qat_on and qat_due(cfg.quant, mult):
            set_qat(self.model, True, cfg.quant)  # a buffer write: takes effect in the compiled graph too
            self.qat_on = True
            self.files.log(
                f"step:{self.step} QAT on (lr multiplier {mult:.3f} < {cfg.quant.qat_start_lr_mult})"
            )
        self.opt.set_muon_momentum(muon_momentum_at(self.step, cfg.optim))
        loss = self._forward_backward()
        cap = self.schedule.max_wallclock_seconds
        nonfinite, capped = any_rank(
            [not bool(torch.isfinite(loss)), cap > 0 and elapsed >= cap], self.dist, self.device
        )
        if nonfinite:
            last = self.files.ckpt_dir / "last.pt"
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            raise TrainingDiverged(
                f"non-finite training loss ({loss.item()}) at step {self.step + 1}; stopping. {kept}"
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
        )

    def _maybe_resume(self) -> bool:
        last = self.files.ckpt_dir / "last.pt"
        if not (self.cfg.train.resume and last.exists()):
            return False
        self.load_state_dict(load_checkpoint(last))
        self.files.truncate_metrics(self.step)
        self.files.log(f"resumed from {last} at step {self.step} (train time {self.train_time:.1f} s)")
        return True

    def _log_start(self) -> None:
        tc = self.cfg.train
        self.files.log(
            f"run {self.run_id}: {count_parameters(self.model):,} parameters, attention backend {self.model.attn_backend}"
        )
        self.files.log(
            f"world_size:{self.dist.world_size} grad_accum_steps:{self.grad_accum} device:{self.device}"
        )
        self.files.log(
            f"train_batch_tokens:{tc.train_batch_tokens} train_seq_len:{tc.train_seq_len} iterations:{tc.iterations} "
            f"max_wallclock_seconds:{tc.max_wallclock_seconds} val_tokens:{self.val_tokens.size - 1}"
        )
        self.files.log(self.opt.groups_table())

    def run(self) -> RunResult:
        files = self.files
        files.write_config(to_yaml(self.cfg))
        resumed = self._maybe_resume()
        if not resumed:
            files.reset()
        self._describe()
        files.status("running", resumed_from_step=self.step if resumed else None)
        self._log_start()
        if not resumed:
            self.warmup()
        try:
            self._loop()
        except TrainingDiverged as e:
            files.log(f"DIVERGED: {e}")
            files.status("diverged", error=str(e), steps=self.step)
            raise
        return finish_run(self)

    def _loop(self) -> None:
        tc, files = self.cfg.train, self.files
        bar = tqdm(
            total=tc.iterations,
            initial=self.step,
            desc="train",
            unit="step",
            mininterval=10,
            disable=not (self.dist.is_main and tc.progress),
            file=sys.stdout,
            ascii=True,
        )
        self._sync()
        t0 = time.perf_counter()
        while True:
            last = self.step >= tc.iterations or (
                self.stop_after is not None and self.step >= self.stop_after
            )
            if last or (tc.val_loss_every and self.step % tc.val_loss_every == 0):
                self._sync()
                self.train_time += time.perf_counter() - t0
                res = self.validate()
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
        if self.stop_after is not None and self.step < tc.iterations:
            files.log(
                f"stopping_early: wallclock cap at step {self.step}/{tc.iterations}, train_time {self.train_time:.1f}s"
            )


def train(cfg: RunConfig, dist: DistInfo | None = None, *, final_stages: bool = True) -> RunResult:
    """Train per ``cfg`` in this process (one rank of a torchrun job, or alone). Callable from notebooks.

    ``final_stages=False``: skip the final pre / ema evaluation (result.json then has no stages), for a
    caller that runs the pipeline's stages on the saved weights anyway.
    """
    dist = dist or dist_info_from_env()
    trainer = Trainer(cfg, dist, final_stages=final_stages)
    try:
        return trainer.run()
    finally:
        destroy_process_group(dist)


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import record

    ap = argparse.ArgumentParser(prog="python -m pgolf_core.train", description="Train a pgolf model.")
    ap.add_argument("params", help="a YAML file under params/")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable"
    )
    ap.add_argument(
        "--no-final-stages",
        action="store_true",
        help="skip the final pre / ema evaluation (the caller runs the pipeline's stages next)",
    )
    args = ap.parse_args(argv)
    cfg = load_config(args.params, args.set)  # validated before anything heavy happens
    result = record(train)(cfg, final_stages=not args.no_final_stages)
    if dist_info_from_env().is_main:
        print(json.dumps({"event": "done", **asdict(result)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
