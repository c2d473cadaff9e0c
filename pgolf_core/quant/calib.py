"""Calibration batches for GPTQ: training tokens or text the model writes itself, never validation;
and the training time to reserve for them.

#1394+ take 16-64 training batches (3.5-13 s, inside the reserved training time: calibration counts
toward the 600 s, #1868); #1019 sampled 64 x 2048 tokens from the trained model (temperature 0.8, first token
uniform, fixed seed; 196.7 s) so no data is touched after training.

Reserve: #2135 collected 32 batches (6.9 s) after a loop that stopped at 599.67 s with a 0.5 s reserve,
so training plus calibration ended near 606.6 s. ``quant.calib_reserve_seconds: auto`` sizes the reserve
from a measured Hessian pass instead (``measure_calibration`` + ``reserve_seconds``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from pgolf_core.config import QuantConfig, RunConfig
from pgolf_core.data.loader import DistributedTokenLoader
from pgolf_core.data.shards import list_shards
from pgolf_core.dist import DistInfo
from pgolf_core.quant.gptq import collect_hessians
from pgolf_core.runtime import autocast_context, model_device

# auto reserve = SAFETY x (the measured pass for calib_batches) + MARGIN_S: step-time jitter between
# pods is 8-9% (#1512), the loop overshoots its stop by up to one step, and the measurement is short.
RESERVE_SAFETY = 1.25
RESERVE_MARGIN_S = 1.0


def train_calibration_batches(
    cfg: RunConfig, dist: DistInfo | None = None, n_batches: int | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """``quant.calib_batches`` training batches of ``train.train_batch_tokens`` (this rank's share).

    Raises if the training glob also matches a validation shard: calibrating on validation text
    would leak it into the weights.
    """
    dist = dist or DistInfo()
    root = cfg.data.root_path()
    train_files = list_shards(root / cfg.data.train_pattern)
    try:
        val_files = {p.resolve() for p in list_shards(root / cfg.data.val_pattern)}
    except FileNotFoundError:
        val_files = set()
    leaked = [str(p) for p in train_files if p.resolve() in val_files]
    if leaked:
        raise ValueError(f"calibration refuses validation shards: {leaked} match data.val_pattern")
    loader = DistributedTokenLoader(train_files, dist.rank, dist.world_size, cfg.model.vocab_size)
    tc = cfg.train
    for _ in range(n_batches or cfg.quant.calib_batches):
        yield loader.next_batch(tc.train_batch_tokens, tc.train_seq_len, 1)


@torch.no_grad()
def self_generated_batches(
    model: nn.Module,
    *,
    n_seqs: int,
    seq_len: int,
    vocab_size: int,
    temperature: float = 0.8,
    batch_size: int = 8,
    seed: int = 0,
    dist: DistInfo | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """Sample ``n_seqs`` sequences of ``seq_len + 1`` tokens from ``model`` (this rank's share of them).

    First token uniform over the vocabulary, then softmax(logits / temperature) sampling with a fixed
    seed per rank. Full-prefix recomputation (no KV cache): simple, and the cost is paid once.
    """
    dist = dist or DistInfo()
    device = model_device(model)
    mine = range(dist.rank, n_seqs, dist.world_size)
    gen = torch.Generator(device=device).manual_seed(seed * 1000003 + dist.rank)
    was_training = model.training
    model.eval()
    out = []
    try:
        idx = list(mine)
        for b0 in range(0, len(idx), batch_size):
            n = len(idx[b0 : b0 + batch_size])
            seq = torch.randint(0, vocab_size, (n, 1), generator=gen, device=device)
            for _ in range(seq_len):
                with autocast_context(device):
                    logits = model(seq)[:, -1].float()
                probs = torch.softmax(logits / temperature, dim=-1)
                seq = torch.cat([seq, torch.multinomial(probs, 1, generator=gen)], dim=1)
            out.append((seq[:, :-1].cpu(), seq[:, 1:].cpu()))
    finally:
        model.train(was_training)
    return out


def calibration_batches(
    cfg: RunConfig, model: nn.Module, dist: DistInfo | None = None
) -> list[tuple[Tensor, Tensor]]:
    """The calibration batches ``cfg.quant.calib_source`` asks for ("train" or "self")."""
    q = cfg.quant
    if q.calib_source == "train":
        return list(train_calibration_batches(cfg, dist))
    return self_generated_batches(
        model,
        n_seqs=q.calib_seqs,
        seq_len=cfg.train.train_seq_len,
        vocab_size=cfg.model.vocab_size,
        temperature=q.calib_temperature,
        seed=cfg.train.seed,
        dist=dist,
    )


@dataclass(frozen=True)
class CalibTiming:
    """A measured Hessian pass: seconds per calibration batch and the fixed cost (all-reduce, hooks)."""

    per_batch_s: float
    fixed_s: float

    def seconds(self, n_batches: int) -> float:
        return self.fixed_s + n_batches * self.per_batch_s


def measure_calibration(
    model: nn.Module, batch_rows: int, seq_len: int, vocab_size: int, dist: DistInfo | None = None
) -> CalibTiming:
    """Time ``collect_hessians`` on this machine with random tokens of the calibration batch shape
    (``batch_rows`` x ``seq_len`` per rank; the cost does not depend on the token values).

    A warm-up pass first, then one and two batches: per batch = max(t2 - t1, t2 / 2) (the difference
    alone can come out near 0 when the fixed cost is noisy; t2 / 2 bounds it from the safe side),
    fixed = t1 - per batch (at least 0). With
    a process group up every rank must call this; the slowest rank's numbers are returned on all of
    them, so every rank stops its loop at the same time.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab_size, (batch_rows, seq_len), generator=gen)
    collect_hessians(model, [(x, None)], dist)
    t1 = collect_hessians(model, [(x, None)], dist).seconds
    t2 = collect_hessians(model, [(x, None), (x, None)], dist).seconds
    per_batch = max(t2 - t1, t2 / 2)
    timing = torch.tensor([per_batch, max(t1 - per_batch, 0.0)], dtype=torch.float64)
    world = (
        (dist.distributed if dist is not None else True) and tdist.is_available() and tdist.is_initialized()
    )
    if world and tdist.get_world_size() > 1:
        timing = timing.to(model_device(model))
        tdist.all_reduce(timing, op=tdist.ReduceOp.MAX)
    return CalibTiming(float(timing[0]), float(timing[1]))


def reserve_seconds(qcfg: QuantConfig, timing: CalibTiming | None = None) -> float:
    """The training time to keep free for calibration: ``quant.calib_reserve_seconds`` when it is a
    number; with "auto", RESERVE_SAFETY x the measured pass for ``quant.calib_batches`` batches plus
    RESERVE_MARGIN_S (``timing`` from ``measure_calibration``, required then)."""
    r = qcfg.calib_reserve_seconds
    if r != "auto":
        return float(r)
    if qcfg.calib_source != "train":
        raise ValueError(
            "quant.calib_reserve_seconds: auto sizes the reserve of a pass over training batches; with "
            f"quant.calib_source={qcfg.calib_source!r} set a number of seconds"
        )
    if timing is None:
        raise ValueError(
            "quant.calib_reserve_seconds: auto needs a measured calibration pass "
            "(timing=measure_calibration(model, rows, seq_len, vocab_size, dist))"
        )
    return RESERVE_SAFETY * timing.seconds(qcfg.calib_batches) + RESERVE_MARGIN_S
