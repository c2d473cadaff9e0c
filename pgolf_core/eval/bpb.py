"""Bits-per-byte evaluation over a window plan, as the challenge scores it.

Both evaluations walk a ``WindowPlan`` (``pgolf_core.eval.windows``): standard evaluation is the plan
with stride == seq_len, sliding-window evaluation a smaller stride. Windows are split into contiguous
ranges per rank and batched; loss, token and byte sums are float64 and all-reduced (as the
challenge's ``eval_val``), so the result does not depend on the number of ranks beyond float64
rounding.

With ``return_streams=True`` the result carries the per-position NLL and byte streams, identical on
every rank. The NLL stream is gathered with one all-reduce over zeros (each position is written by
exactly one rank, so the sum is exact); the bytes are recomputed from the tokens locally.

Byte counts come from a ``TargetBytes`` (``eval.target_bytes``): the tokenizer byte tables, or the
CaseOps validation sidecar; every evaluator also accepts plain ``ByteLUTs`` (wrapped as tables).

Shapes: B windows in a batch, T window length, V vocab.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F

from pgolf_core.data.tokenizer_bytes import ByteLUTs
from pgolf_core.dist import DistInfo
from pgolf_core.eval.result import EvalResult
from pgolf_core.eval.target_bytes import TargetBytes, as_target_bytes, bytes_source
from pgolf_core.eval.windows import WindowPlan, device_tokens, rank_slice, window_batch, window_plan
from pgolf_core.runtime import autocast_context
from pgolf_core.scoring import ScoreEvents

NllFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: (x, y, pos_BT, mask_BT) -> the NLL to commit (B, T): for scorers whose NLL depends on the stream
#: position of each target (the tilt); called under no_grad, it sets up its own autocast
PositionedNll = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def nll_with_temperature(model: torch.nn.Module, temperature: float) -> NllFn:
    """Per-token NLL of ``softmax(logits / T)``; T = 1 uses the model's own ``nll``."""
    if temperature == 1.0:
        return model.nll

    def nll(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x).float() / temperature
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view_as(
            y
        )

    return nll


def resolve_nll(fn, temperature: float = 1.0) -> NllFn:
    """An ``(x, y) -> (B, T)`` NLL function from a model or a callable.

    ``fn`` is a model with ``logits`` (the GPT; T = 1 uses its own ``nll``, so the plain path is
    unchanged), or a callable ``fn(x, y)`` returning either per-token NLL (B, T) or logits (B, T, V).
    A temperature other than 1 divides the logits (no record rescales logits at evaluation); it
    needs logits.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if hasattr(fn, "logits"):
        return nll_with_temperature(fn, temperature)

    def nll(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = fn(x, y)
        if out.dim() == y.dim():
            if temperature != 1.0:
                raise ValueError(
                    "a temperature other than 1 needs logits; this function returns per-token NLL"
                )
            return out
        logits = out.float() if temperature == 1.0 else out.float() / temperature
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view_as(
            y
        )

    return nll


def device_target_bytes(source: TargetBytes | ByteLUTs | None, device: torch.device) -> TargetBytes | None:
    """``source`` as a ``TargetBytes`` with its tables on ``device`` (None: no bytes counted)."""
    tb = as_target_bytes(source)
    return None if tb is None else tb.to(device)


class ScoreSums:
    """float64 loss / token / byte sums on the device, the optional per-position NLL stream, and how
    many times each target position was committed (``committed``, int32 [N]; T4 judges it)."""

    def __init__(self, n_tokens: int, device: torch.device, streams: bool):
        self.device = device
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.nll = torch.zeros(n_tokens, dtype=torch.float32, device=device) if streams else None
        # The evaluation's own record of what entered the loss sum, position by position: a count
        # cannot tell one overlap plus one gap from exactly once. int32, 4 bytes a token (190 MB for
        # the 47M-token CaseOps validation set), one scatter-add per batch.
        self.committed: torch.Tensor | None = torch.zeros(n_tokens, dtype=torch.int32, device=device)

    def add(self, positions: torch.Tensor | None, nll: torch.Tensor, nbytes: torch.Tensor | None) -> None:
        """Commit the NLLs of target ``positions`` (1-D tensors of equal length; without positions the
        commits go unrecorded and ``committed`` becomes None)."""
        self.sums[0] += nll.double().sum()
        self.sums[1] += nll.numel()
        if positions is None:
            self.committed = None
        elif self.committed is not None:  # index_add_ accumulates repeats within a batch too
            self.committed.index_add_(0, positions, torch.ones_like(positions, dtype=torch.int32))
        if nbytes is not None:
            self.sums[2] += nbytes.double().sum()
        if self.nll is not None:
            self.nll[positions] = nll.float()

    def finish(
        self, tokens: np.ndarray, target_bytes: TargetBytes | None, dist: DistInfo, t0: float, **extra
    ) -> EvalResult:
        """All-reduce the sums (and the stream) across ranks and build the result; ``target_bytes``
        (None: tokens only) gives the byte stream and the result's ``bytes_source``."""
        if dist.distributed and tdist.is_initialized():
            tdist.all_reduce(self.sums)
            if self.committed is not None:
                tdist.all_reduce(self.committed)
            if self.nll is not None:
                tdist.all_reduce(self.nll)
        loss_sum, count, nbytes = self.sums.tolist()
        extra.setdefault("committed", None if self.committed is None else self.committed.cpu().numpy())
        nll = byte_counts = None
        if self.nll is not None:
            nll = self.nll.cpu().numpy()
            nll[0] = np.nan
            if target_bytes is not None:
                byte_counts = target_bytes.stream(tokens)
        seconds = time.perf_counter() - t0
        return EvalResult.from_sums(
            loss_sum,
            count,
            nbytes,
            seconds,
            nll=nll,
            byte_counts=byte_counts,
            bytes_source=bytes_source(target_bytes),
            **extra,
        )


@dataclass
class Capture:
    """Full predictive distributions wanted at some positions (``Scorer.predictive``): filled while
    scoring, from the same model state and window the scored NLL came from."""

    positions: np.ndarray
    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None  # set by the evaluation path
    temperature: float = 1.0
    probs: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return len(self.probs) == len(set(self.positions.tolist()))

    def take(self, x: torch.Tensor, starts: np.ndarray, row_positions: list[np.ndarray]) -> None:
        """``row_positions[i]``: target positions scored by row i of the batch ``x``."""
        rows = [(i, np.intersect1d(p, self.positions)) for i, p in enumerate(row_positions)]
        rows = [(i, p) for i, p in rows if p.size]
        if not rows:
            return
        logits = self.logits_fn(x[[i for i, _ in rows]]).double() / self.temperature
        probs = torch.softmax(logits, dim=-1).cpu().numpy()  # float64: sums to 1 within 1e-15 (T2)
        for k, (i, positions) in enumerate(rows):
            for p in positions:
                self.probs[int(p)] = probs[k, int(p) - int(starts[i]) - 1]

    def matrix(self, order: Sequence[int]) -> np.ndarray:
        return np.stack([self.probs[int(p)] for p in order])


def score_windows(
    nll_fn: NllFn,
    tokens_d: torch.Tensor,
    plan: WindowPlan,
    ids: np.ndarray,
    *,
    batch_seqs: int,
    sums: ScoreSums,
    target_bytes: TargetBytes | None,
    device: torch.device,
    autocast: bool,
    events: ScoreEvents | None = None,
    capture: Capture | None = None,
    positioned_nll: PositionedNll | None = None,
) -> None:
    """Score windows ``ids`` of ``plan`` in batches of ``batch_seqs`` and commit them to ``sums``;
    ``target_bytes`` (on ``device``; None: tokens only) counts the committed targets' bytes.

    Not a loop over tokens: each batch is one forward of (B, seq_len) and one masked gather.
    ``events.scored`` is called once per batch, after its NLLs are committed. ``positioned_nll``, when
    given, replaces ``nll_fn`` (ignored then) and its NLLs are committed at the precision it returns.
    """
    T = plan.seq_len
    ids = np.asarray(ids, dtype=np.int64)
    offsets_T = torch.arange(T, device=device)
    # This rank's window geometry goes to the device once; batches slice it (no per-batch copies).
    geometry = (plan.starts, plan.score_from, plan.lengths)
    starts_W, lo_W, hi_W = (torch.as_tensor(a[ids], device=device) for a in geometry)
    need_positions = sums.nll is not None or sums.committed is not None or events is not None
    need_positions |= target_bytes is not None and target_bytes.needs_positions
    for b in range(0, len(ids), batch_seqs):
        sl = slice(b, b + batch_seqs)
        x, y = window_batch(tokens_d, starts_W[sl], T)
        mask_BT = (offsets_T >= lo_W[sl, None]) & (offsets_T < hi_W[sl, None])
        if positioned_nll is None:
            with torch.no_grad(), autocast_context(device, autocast):
                nll = nll_fn(x, y).float()[mask_BT]
            positions = (starts_W[sl, None] + 1 + offsets_T)[mask_BT] if need_positions else None
        else:
            pos_BT = starts_W[sl, None] + 1 + offsets_T
            with torch.no_grad():
                nll = positioned_nll(x, y, pos_BT, mask_BT)[mask_BT]
            positions = pos_BT[mask_BT]
        nbytes = None
        if target_bytes is not None:
            nbytes = target_bytes.targets(x[mask_BT], y[mask_BT], positions)
        sums.add(positions, nll, nbytes)
        if capture is not None and not capture.done:
            wid = ids[sl]
            row_pos = [np.arange(plan.first_scored[w], plan.last_scored[w] + 1) for w in wid]
            with torch.no_grad(), autocast_context(device, autocast):
                capture.take(x, plan.starts[wid], row_pos)
        if events is not None:
            events.scored(positions.cpu().numpy())


def evaluate_plan(
    fn,
    val_tokens: np.ndarray,
    target_bytes: TargetBytes | ByteLUTs | None,
    plan: WindowPlan,
    *,
    batch_seqs: int,
    dist: DistInfo,
    device: torch.device,
    autocast: bool = True,
    temperature: float = 1.0,
    return_streams: bool = False,
    events: ScoreEvents | None = None,
    capture: Capture | None = None,
) -> EvalResult:
    """Score every window of ``plan`` once, this rank's contiguous share of them, and reduce.
    ``target_bytes``: the byte source (tables or sidecar; None: tokens only, bpb nan)."""
    t0 = time.perf_counter()
    device = torch.device(device)
    target_bytes = device_target_bytes(target_bytes, device)
    nll_fn = resolve_nll(fn, temperature)
    tokens_d = device_tokens(val_tokens, device)
    sums = ScoreSums(plan.n_tokens, device, return_streams)
    ids = np.arange(plan.num_windows)[rank_slice(plan.num_windows, dist)]
    score_windows(
        nll_fn,
        tokens_d,
        plan,
        ids,
        batch_seqs=batch_seqs,
        sums=sums,
        target_bytes=target_bytes,
        device=device,
        autocast=autocast,
        events=events,
        capture=capture,
    )
    return sums.finish(val_tokens, target_bytes, dist, t0)


def evaluate_standard(
    nll_fn,
    val_tokens: np.ndarray,
    target_bytes: TargetBytes | ByteLUTs,
    *,
    seq_len: int,
    batch_tokens: int,
    dist: DistInfo,
    device: torch.device,
    autocast: bool = True,
    temperature: float = 1.0,
    return_streams: bool = False,
) -> EvalResult:
    """Score every target of ``val_tokens`` once with non-overlapping windows of ``seq_len`` (the
    challenge baseline's ``eval_val``).

    ``nll_fn``: ``model.nll`` (possibly compiled), the model itself, or any ``fn(x, y)`` returning NLL or
    logits (see ``resolve_nll``); ``target_bytes`` the byte source (``TargetBytes``, or numpy / torch
    byte tables). A stream that is not ``k * seq_len + 1``
    long ends in one shorter window, so no target is skipped. ``batch_tokens`` counts all ranks
    together. All ranks must call this together.
    """
    plan = window_plan(int(np.asarray(val_tokens).shape[0]), seq_len, seq_len)
    per_batch = max(1, batch_tokens // (dist.world_size * seq_len))
    return evaluate_plan(
        nll_fn,
        val_tokens,
        target_bytes,
        plan,
        batch_seqs=per_batch,
        dist=dist,
        device=device,
        autocast=autocast,
        temperature=temperature,
        return_streams=return_streams,
    )


def evaluate_sliding(
    nll_or_logits_fn,
    val_tokens: np.ndarray,
    target_bytes: TargetBytes | ByteLUTs,
    *,
    seq_len: int,
    stride: int,
    batch_seqs: int,
    dist: DistInfo,
    device: torch.device,
    autocast: bool = True,
    temperature: float = 1.0,
    return_streams: bool = False,
) -> EvalResult:
    """Sliding-window evaluation (record folder 2026-03-19_SlidingWindowEval): a ``seq_len`` window
    every ``stride`` tokens, each target scored exactly once with at least ``seq_len - stride + 1``
    tokens of context (all of them in the first window). ``batch_seqs`` windows per forward on each
    rank. All ranks must call this together.
    """
    plan = window_plan(int(np.asarray(val_tokens).shape[0]), seq_len, stride)
    return evaluate_plan(
        nll_or_logits_fn,
        val_tokens,
        target_bytes,
        plan,
        batch_seqs=batch_seqs,
        dist=dist,
        device=device,
        autocast=autocast,
        temperature=temperature,
        return_streams=return_streams,
    )
