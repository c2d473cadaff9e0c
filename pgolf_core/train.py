"""The training loop, as a function (``train(cfg)``) and as a torchrun entry point.

    python -m pgolf_core.train params/smoke/train.yaml [--set train.iterations=50]
    torchrun --standalone --nproc_per_node=8 -m pgolf_core.train params/h100x8/baseline.yaml

What a run writes, all atomically, to ``<train.run_dir>/<run_id>/``:
    config.yaml      the fully resolved config
    run.json         manifest: status, world size, device, attention backend, versions, routing, timings
    metrics.jsonl    one JSON object per train log / validation / final stage
    train.log        the human log (rank 0)
    checkpoints/     last.pt (full training state, for resume), final_raw.pt and final_ema.pt (weights)
    result.json      the final stages (pre, and ema when EMA is on) with val loss / bpb

Semantics follow the challenge baseline (records.md C7): a wallclock cap that excludes in-loop
validation and is agreed across ranks (MAX), LR warmdown by iterations (wallclock-aware under a cap) or
by training fraction with a floor, Muon momentum warmup, compile-warmup steps whose state is restored
afterwards, EMA after every step. Gradients are averaged by DDP and clipped after averaging (the DDP
records' semantics; banked records clip per rank, records.md I.3). Killing a run and starting it again
resumes from the last checkpoint; on CPU the final weights equal an uninterrupted run's.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist
from tqdm import tqdm

import pgolf_core
from pgolf_core.atomic import atomic_write, atomic_write_json, atomic_write_text
from pgolf_core.config import RunConfig, load_config, to_yaml
from pgolf_core.data.loader import DistributedTokenLoader, load_validation_tokens
from pgolf_core.data.shards import list_shards
from pgolf_core.data.tokenizer import load_tokenizer
from pgolf_core.data.tokenizer_bytes import build_byte_luts
from pgolf_core.dist import DistInfo, dist_info_from_env
from pgolf_core.eval import EvalResult, evaluate_standard, load_target_bytes, nll_with_temperature
from pgolf_core.model import build_model, count_parameters
from pgolf_core.optim import EMA, build_optimizers, lr_multiplier, muon_momentum_at
from pgolf_core.quant import calibration_batches, collect_hessians, qat_due, set_qat
from pgolf_core.quant.classify import QUANT_GROUPS


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunResult:
    run_id: str
    run_dir: str
    status: str
    steps: int
    train_seconds: float
    stopped_early: bool
    params: int
    attn_backend: str
    stages: dict[str, dict] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------


def resolve_device(requested: str, dist: DistInfo) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but torch.cuda.is_available() is False")
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def init_process_group(dist: DistInfo, device: torch.device) -> None:
    if not dist.distributed or tdist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        tdist.init_process_group("nccl", device_id=device)
    else:
        tdist.init_process_group("gloo")


def _broadcast_str(value: str, dist: DistInfo) -> str:
    if not (dist.distributed and tdist.is_initialized()):
        return value
    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class RunFiles:
    """The run folder; only rank 0 writes."""

    def __init__(self, root: Path, is_main: bool):
        self.root, self.is_main = root, is_main
        self.ckpt_dir = root / "checkpoints"
        if is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)

    def log(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg, file=sys.stdout)
            sys.stdout.flush()  # stream live through pipes (notebook launcher, torchrun)
            with open(self.root / "train.log", "a", encoding="utf-8") as f:
                f.write(msg + "\n")

    def metric(self, record: dict) -> None:
        if self.is_main:
            with open(self.root / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop records from steps the resumed run will redo."""
        path = self.root / "metrics.jsonl"
        if self.is_main and path.exists():
            keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= after_step]
            atomic_write_text(path, "".join(k + "\n" for k in keep))

    def reset(self) -> None:
        """A fresh (not resumed) run owns its folder: drop logs and results of an earlier run there."""
        if self.is_main:
            for name in ("metrics.jsonl", "train.log", "result.json"):
                (self.root / name).unlink(missing_ok=True)

    def json(self, name: str, obj: dict) -> None:
        if self.is_main:
            atomic_write_json(self.root / name, obj)


# --------------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, cfg: RunConfig, dist: DistInfo):
        self.cfg, self.dist = cfg, dist
        tc = cfg.train
        self.device = resolve_device(tc.device, dist)
        init_process_group(dist, self.device)
        if tc.grad_accum_steps:
            self.grad_accum = tc.grad_accum_steps
        elif 8 % dist.world_size == 0:
            self.grad_accum = 8 // dist.world_size
        else:
            raise ValueError(f"WORLD_SIZE={dist.world_size} does not divide 8; set train.grad_accum_steps explicitly")
        self.autocast = tc.autocast and self.device.type == "cuda"
        run_id = _broadcast_str(tc.run_id or time.strftime("%Y%m%d-%H%M%S") + f"-s{tc.seed}", dist)
        self.files = RunFiles(Path(tc.run_dir) / run_id, dist.is_main)
        self.run_id = run_id
        _seed_everything(tc.seed)
        self._load_data()
        self.model = build_model(cfg.model).to(self.device)
        self.opt = build_optimizers(self.model, cfg.optim, tie_embeddings=cfg.model.tie_embeddings, fused=self.device.type == "cuda")
        self.ema = EMA(self.model, tc.ema_decay) if tc.ema_decay > 0 else None
        self.loader = DistributedTokenLoader(self.train_files, dist.rank, dist.world_size, cfg.model.vocab_size)
        q = cfg.quant
        self.gptq = q.scheme == "groups" and any(getattr(q, g).gptq for g in QUANT_GROUPS)
        # GPTQ calibration runs on training data after the loop and counts against the training budget
        # (records.md D6, I.7; #1868 reserved 8 s): the loop's cap is shortened by the reserve.
        reserve = q.calib_reserve_seconds if self.gptq and tc.max_wallclock_seconds > 0 else 0.0
        self.schedule = tc.model_copy(update={"max_wallclock_seconds": max(tc.max_wallclock_seconds - reserve, 0.0)})
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
        self.train_files = list_shards(root / dc.train_pattern)
        val_files = list_shards(root / dc.val_pattern)
        self.val_tokens = load_validation_tokens(val_files, self.cfg.eval_seq_len, dc.val_max_tokens, mc.vocab_size)
        self.target_bytes = load_target_bytes(  # byte tables, or the CaseOps sidecar (data.caseops)
            dc, build_byte_luts(sp, mc.vocab_size), val_files, seq_len=self.cfg.eval_seq_len,
            n_tokens=self.val_tokens.shape[0],
        ).to(self.device)

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
            "loops_on": self.model.loops_on,
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
        self.model.set_loops(state["loops_on"])
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

    def _agree(self, *flags: bool) -> list[bool]:
        """Logical OR of each flag across ranks (one small all-reduce)."""
        t = torch.tensor([float(f) for f in flags], device=self.device)
        if self.dist.distributed:
            tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def training_fraction(self, elapsed: float) -> float:
        tc = self.schedule
        if tc.max_wallclock_seconds > 0:
            return elapsed / tc.max_wallclock_seconds
        return self.step / max(tc.iterations, 1)

    def warmup(self) -> None:
        """Run compile-warmup steps, then restore the initial state (records.md C7): not an LR warmup."""
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
        self.loader = DistributedTokenLoader(self.train_files, self.dist.rank, self.dist.world_size, self.cfg.model.vocab_size)

    def validate(self) -> EvalResult:
        self.model.eval()
        result = evaluate_standard(
            self.nll, self.val_tokens, self.target_bytes, seq_len=self.cfg.eval_seq_len,
            batch_tokens=self.cfg.eval.batch_tokens, dist=self.dist, device=self.device, autocast=self.autocast,
        )
        self.model.train()
        return result

    def train_step(self, elapsed: float) -> tuple[float, float]:
        """One optimizer step; returns (train loss, lr multiplier). Raises TrainingDiverged on NaN/inf."""
        cfg = self.cfg
        loops = cfg.model.residual.loops
        if loops.count and not self.model.loops_on and self.training_fraction(elapsed) >= loops.enable_frac:
            self.model.set_loops(True)
            self.files.log(f"step:{self.step} depth recurrence on (training fraction {self.training_fraction(elapsed):.3f})")
        mult = lr_multiplier(self.step, elapsed, self.schedule)
        self.opt.set_lr_multiplier(mult)
        if not self.qat_on and qat_due(cfg.quant, mult):
            set_qat(self.model, True, cfg.quant)  # a buffer write: takes effect in the compiled graph too
            self.qat_on = True
            self.files.log(f"step:{self.step} QAT on (lr multiplier {mult:.3f} < {cfg.quant.qat_start_lr_mult})")
        self.opt.set_muon_momentum(muon_momentum_at(self.step, cfg.optim))
        loss = self._forward_backward()
        cap = self.schedule.max_wallclock_seconds
        nonfinite, capped = self._agree(not bool(torch.isfinite(loss)), cap > 0 and elapsed >= cap)
        if nonfinite:
            last = self.files.ckpt_dir / "last.pt"
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            raise TrainingDiverged(f"non-finite training loss ({loss.item()}) at step {self.step + 1}; stopping. {kept}")
        self._optimizer_step()
        self.step += 1
        if capped and self.stop_after is None:
            self.stop_after = self.step
        return float(loss.item()), mult

    # ----- the run -----
    def _manifest(self, status: str, **extra) -> dict:
        return {
            "run_id": self.run_id,
            "status": status,
            "pgolf": pgolf_core.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or platform.machine(),
            "world_size": self.dist.world_size,
            "grad_accum_steps": self.grad_accum,
            "attn_backend": self.model.attn_backend,
            "params": count_parameters(self.model),
            "optimizer_groups": self.opt.param_names_by_group(),
            **extra,
        }

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
        self.files.log(f"run {self.run_id}: {count_parameters(self.model):,} parameters, attention backend {self.model.attn_backend}")
        self.files.log(f"world_size:{self.dist.world_size} grad_accum_steps:{self.grad_accum} device:{self.device}")
        self.files.log(f"train_batch_tokens:{tc.train_batch_tokens} train_seq_len:{tc.train_seq_len} iterations:{tc.iterations} "
                       f"max_wallclock_seconds:{tc.max_wallclock_seconds} val_tokens:{self.val_tokens.size - 1}")
        self.files.log(self.opt.groups_table())

    def run(self) -> RunResult:
        files, tc = self.files, self.cfg.train
        if self.dist.is_main:
            atomic_write_text(files.root / "config.yaml", to_yaml(self.cfg))
        resumed = self._maybe_resume()
        if not resumed:
            files.reset()
        files.json("run.json", self._manifest("running", resumed_from_step=self.step if resumed else None))
        self._log_start()
        if not resumed:
            self.warmup()
        try:
            self._loop()
        except TrainingDiverged as e:
            files.log(f"DIVERGED: {e}")
            files.json("run.json", self._manifest("diverged", error=str(e), steps=self.step))
            raise
        return self._finish()

    def _loop(self) -> None:
        tc, files = self.cfg.train, self.files
        bar = tqdm(total=tc.iterations, initial=self.step, desc="train", unit="step", mininterval=10,
                   disable=not (self.dist.is_main and tc.progress), file=sys.stdout, ascii=True)
        self._sync()
        t0 = time.perf_counter()
        while True:
            last = self.step >= tc.iterations or (self.stop_after is not None and self.step >= self.stop_after)
            if last or (tc.val_loss_every and self.step % tc.val_loss_every == 0):
                self._sync()
                self.train_time += time.perf_counter() - t0
                res = self.validate()
                files.log(f"step:{self.step}/{tc.iterations} val_loss:{res.loss:.4f} val_bpb:{res.bpb:.4f} "
                          f"train_time:{self.train_time:.1f}s eval_time:{res.seconds:.1f}s")
                files.metric({"event": "val", "step": self.step, "val_loss": res.loss, "val_bpb": res.bpb,
                              "train_time_s": self.train_time, "eval_s": res.seconds})
                self._sync()
                t0 = time.perf_counter()
            if last:
                break
            loss, mult = self.train_step(self.train_time + time.perf_counter() - t0)
            elapsed = self.train_time + time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if tc.train_log_every and (self.step <= 10 or self.step % tc.train_log_every == 0):
                files.log(f"step:{self.step}/{tc.iterations} train_loss:{loss:.4f} lr_mult:{mult:.4f} "
                          f"train_time:{elapsed:.1f}s step_avg:{1000 * elapsed / self.step:.1f}ms")
                files.metric({"event": "train", "step": self.step, "train_loss": loss, "lr_mult": mult,
                              "tokens": self.step * tc.train_batch_tokens, "train_time_s": elapsed})
            if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                self.train_time += time.perf_counter() - t0
                self.checkpoint()
                t0 = time.perf_counter()
        bar.close()
        if self.stop_after is not None and self.step < tc.iterations:
            files.log(f"stopping_early: wallclock cap at step {self.step}/{tc.iterations}, train_time {self.train_time:.1f}s")

    def _final_stage(self, name: str) -> dict:
        self.model.set_loops(True)  # evaluation always runs with the loops on (a no-op without loops)
        res = self.validate()
        self.files.log(f"stage {name}: val_loss:{res.loss:.6f} val_bpb:{res.bpb:.6f} "
                       f"({res.tokens:,} tokens, {res.bytes:,} bytes, {res.seconds:.1f}s)")
        self.files.metric({"event": "stage", "stage": name, "step": self.step, **res.as_dict()})
        return res.as_dict()

    def _calibrate(self) -> None:
        """GPTQ Hessians from training batches (or self-generated text), timed into the training budget."""
        if self.cfg.quant.qat:
            set_qat(self.model, False, self.cfg.quant)  # calibrate on the plain weights' activations
        t0 = time.perf_counter()
        hessians = collect_hessians(self.model, calibration_batches(self.cfg, self.model, self.dist), self.dist)
        self.calib_seconds = time.perf_counter() - t0
        if self.dist.is_main:
            save_checkpoint(self.files.ckpt_dir / "hessians.pt", dict(hessians))
        total = self.train_time + self.calib_seconds
        self.files.log(f"gptq calibration: {len(hessians)} Hessians from {hessians.batches} batches in "
                       f"{self.calib_seconds:.1f}s; training + calibration = {total:.1f}s")

    def _finish(self) -> RunResult:
        files, tc = self.files, self.cfg.train
        self.checkpoint()
        stages = {"pre": self._final_stage("pre")}
        if self.dist.is_main:
            save_checkpoint(files.ckpt_dir / "final_raw.pt", self.model.state_dict())
        raw = copy.deepcopy(self.model.state_dict()) if self.ema else None
        if self.ema:
            self.ema.copy_to(self.model)
            stages["ema"] = self._final_stage("ema")
            if self.dist.is_main:
                save_checkpoint(files.ckpt_dir / "final_ema.pt", self.model.state_dict())
        if self.gptq:
            self._calibrate()  # on the weights the artifact will hold (EMA when on, as the records)
        if raw is not None:
            self.model.load_state_dict(raw)
        result = RunResult(
            run_id=self.run_id, run_dir=str(files.root), status="completed", steps=self.step,
            train_seconds=self.train_time + self.calib_seconds, stopped_early=self.step < tc.iterations,
            params=count_parameters(self.model), attn_backend=self.model.attn_backend, stages=stages,
        )
        files.json("result.json", asdict(result))
        files.json("run.json", self._manifest("completed", steps=self.step, train_seconds=self.train_time,
                                              calib_seconds=self.calib_seconds, stages=stages))
        return result


def train(cfg: RunConfig, dist: DistInfo | None = None) -> RunResult:
    """Train per ``cfg`` in this process (one rank of a torchrun job, or alone). Callable from notebooks."""
    dist = dist or dist_info_from_env()
    trainer = Trainer(cfg, dist)
    try:
        return trainer.run()
    finally:
        if dist.distributed and tdist.is_initialized():
            tdist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import record

    ap = argparse.ArgumentParser(prog="python -m pgolf_core.train", description="Train a pgolf model.")
    ap.add_argument("params", help="a YAML file under params/")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    args = ap.parse_args(argv)
    cfg = load_config(args.params, args.set)  # validated before anything heavy happens
    result = record(train)(cfg)
    if dist_info_from_env().is_main:
        print(json.dumps({"event": "done", **asdict(result)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
