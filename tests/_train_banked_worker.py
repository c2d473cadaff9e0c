"""Worker for tests/test_train_banked.py: importable by spawned children (pytest does not collect it).

Each rank trains on the parent's gloo group: an uninterrupted banked run, then a banked run stopped
after its first checkpoint and started again (a resume), then the uninterrupted run again under
torch.compile (forced on for the CPU, dynamo's ``aot_eager`` backend) with compile-warmup steps. It saves
what the test checks beside the runs: what DDP was told to ignore, the reduce-scatters per micro-batch
and per optimizer step, the clip norms.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

import pgolf_core.optim.banked as banked
import pgolf_core.train as train_mod
from pgolf_core.config import load_config
from pgolf_core.dist import DistInfo
from pgolf_core.optim.groups import OptimizerSet
from pgolf_core.train import Trainer, train
from tests.gloo import gloo_group

CUT = 6  # the interrupted run stops before this step: after its checkpoint at 4, steps 5 and 6 are redone


class Cut(Exception):
    """Stops a run (every rank at the same step, as a kill of the whole job would)."""


def instrument(record: dict) -> None:
    """Wrap the collectives and the trainer's steps to record what the test asserts."""
    calls = [0]
    reduce_scatter = banked._reduce_scatter

    def counting(*args, **kwargs):
        calls[0] += 1
        return reduce_scatter(*args, **kwargs)

    banked._reduce_scatter = counting
    wrap_model, forward_backward, optimizer_step = (
        Trainer._wrap_model,
        Trainer._forward_backward,
        Trainer._optimizer_step,
    )
    clip = OptimizerSet.clip_grad_norm_

    def _wrap_model(self):
        wrap_model(self)
        record["ignored"] = sorted(self.forward.parameters_to_ignore)
        record["matrices"] = sorted(self.opt.param_names["matrix"])

    def _forward_backward(self):
        before = calls[0]
        loss = forward_backward(self)
        record["during_backward"] += calls[0] - before
        return loss

    def _optimizer_step(self):
        before = calls[0]
        optimizer_step(self)
        record["per_step"].append(calls[0] - before)
        record["banks"] = sum(len(b) for b in self.opt.optimizers["muon"]._banks)

    def clip_grad_norm_(self, params, max_norm):
        norm = clip(self, params, max_norm)
        record["norms"].append(float(norm))
        return norm

    Trainer._wrap_model, Trainer._forward_backward = _wrap_model, _forward_backward
    Trainer._optimizer_step, OptimizerSet.clip_grad_norm_ = _optimizer_step, clip_grad_norm_


def cut_at(step: int):
    train_step = Trainer.train_step

    def stopping(self, elapsed):
        if self.step == step:
            raise Cut(f"stopped before step {step + 1}")
        return train_step(self, elapsed)

    return stopping


def worker(rank: int, world: int, port: int, config: str, overrides: dict, out_dir: str) -> None:
    with gloo_group(rank, world, port):
        # The group is gloo_group's (it tears it down after a barrier); train() would destroy it.
        train_mod.destroy_process_group = lambda dist: None
        info = DistInfo(rank, world, rank)
        record = {"during_backward": 0, "per_step": [], "norms": []}
        instrument(record)
        train(load_config(config, overrides["whole"]), info, final_stages=False)
        whole = dict(record)
        record.update(during_backward=0, per_step=[], norms=[])
        uninterrupted = Trainer.train_step
        Trainer.train_step = cut_at(CUT)
        try:
            train(load_config(config, overrides["cut"]), info, final_stages=False)
            raise AssertionError("the run was not cut")
        except Cut:
            pass
        Trainer.train_step = uninterrupted
        train(load_config(config, overrides["cut"]), info, final_stages=False)
        # The CUDA wrapping on CPU: DDP around the compiled module, whose parameter names carry
        # ``_orig_mod.``. aot_eager traces forward and backward as inductor does but runs the same aten
        # kernels as eager, so the weights must be bitwise the eager run's (inductor on CPU: 2.3e-5 after
        # 6 steps, by hand, 2026-12-02).
        record.update(during_backward=0, per_step=[], norms=[])
        Trainer._compiles = lambda self: True
        torch.compile = functools.partial(torch.compile, backend="aot_eager")
        train(load_config(config, overrides["compiled"]), info, final_stages=False)
        compiled = dict(record)
        torch.save({"whole": whole, "compiled": compiled}, Path(out_dir) / f"rank{rank}.pt")
