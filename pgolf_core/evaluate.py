"""Bits-per-byte evaluation, as the challenge scores it (records.md A5, E1, E2).

Both evaluations walk a ``WindowPlan``: windows of at most ``seq_len`` tokens starting every ``stride``
tokens, each scoring a disjoint, contiguous range of target positions, so that every target
1..N-1 of the stream is scored exactly once (compliance.md section 0 item 8, test T4).

- Standard evaluation (records E1) is the plan with stride == seq_len: non-overlapping windows, every
  target scored with 0..seq_len-1 tokens of context.
- Sliding-window evaluation (records E2; SW README at seq 1024: 1.2244 -> 1.1925 bpb from evaluation
  alone, about 4x the evaluation time) starts a window every ``stride`` tokens; the first window
  scores all its targets, every later one only the targets after its first ``seq_len - stride``, so
  each of them sees at least ``seq_len - stride + 1`` tokens of context.

Windows are split into contiguous ranges per rank and batched; loss, token and byte sums are float64
and all-reduced, so the result does not depend on the number of ranks beyond float64 rounding.

Per-position streams (``return_streams=True``): ``EvalResult.nll`` (float32 [N], nan at position 0)
and ``EvalResult.byte_counts`` (int16 [N], 0 at position 0), identical on every rank. They are kept in
memory: for the 62M-token sp1024 validation set that is 248 MB + 124 MB per process, which a GPU
node holds easily; float32 loses nothing because the model's NLLs are float32 to begin with. The NLL
stream is gathered with one all-reduce over zeros (each position is written by exactly one rank, so
the sum is exact); the bytes are recomputed from the tokens locally.

Shapes: B windows in a batch, T window length, V vocab.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F

from pgolf_core.data.tokenizer_bytes import LN2, ByteLUTs, token_bytes
from pgolf_core.dist import DistInfo
from pgolf_core.scoring import ScoreEvents, Scorer, StreamScore
from pgolf_core.stages import StageRecord, Verdict

NllFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EvalResult:
    """One evaluation. ``as_dict`` is JSON-friendly (it leaves out the per-position streams).

    ``compliant`` is False only for the explicitly non-compliant ablations (compliance.md R9); their
    ``notes`` say why, and ``stage_record`` attaches a failed verdict so the number is never shown
    without it.
    """

    loss: float  # mean NLL, nats per scored token
    bpb: float  # bits per byte
    tokens: int  # scored targets
    bytes: int  # UTF-8 bytes those targets stand for
    seconds: float
    notes: str = ""
    compliant: bool = True
    info: dict = field(default_factory=dict, compare=False)  # JSON scalars: TTT chunks, steps, timings
    nll: np.ndarray | None = field(default=None, compare=False, repr=False)  # float32 [N], nan at 0
    byte_counts: np.ndarray | None = field(default=None, compare=False, repr=False)  # int16 [N]

    def as_dict(self) -> dict:
        d = {"loss": self.loss, "bpb": self.bpb, "tokens": self.tokens, "bytes": self.bytes, "seconds": self.seconds}
        if self.notes:
            d["notes"] = self.notes
        if not self.compliant:
            d["compliant"] = False
        if self.info:
            d["info"] = dict(self.info)
        return d

    def stage_record(self, stage: str, artifact_bytes: int | None = None, verdicts: Sequence[Verdict] = ()) -> StageRecord:
        """This result as a stage record; a non-compliant result carries a failed verdict with its notes."""
        verdicts = list(verdicts)
        if not self.compliant:
            verdicts.append(Verdict("rules", False, self.notes or "NON-COMPLIANT evaluation"))
        return StageRecord(
            stage=stage, val_bpb=self.bpb, val_loss=self.loss, tokens=self.tokens, bytes=self.bytes,
            seconds=self.seconds, artifact_bytes=artifact_bytes, verdicts=verdicts, notes=self.notes,
        )

    def stream_score(self) -> StreamScore:
        """The per-position NLLs as a ``StreamScore`` (needs ``return_streams=True``)."""
        if self.nll is None:
            raise ValueError("this result has no per-position stream; evaluate with return_streams=True")
        return StreamScore(self.nll.astype(np.float64), info=dict(self.info))


# --------------------------------------------------------------------------------------------------
# The window plan
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowPlan:
    """Windows over a stream of ``n_tokens`` tokens (targets 1..n_tokens-1).

    Window w reads the inputs x[starts[w] : starts[w] + lengths[w]] and scores the targets at positions
    starts[w] + 1 + [score_from[w], lengths[w]). The scored ranges are disjoint, contiguous and cover
    every target once, in increasing order of w.
    """

    n_tokens: int
    seq_len: int
    stride: int
    starts: np.ndarray  # int64 [W]
    lengths: np.ndarray  # int64 [W]
    score_from: np.ndarray  # int64 [W]

    @property
    def num_windows(self) -> int:
        return int(self.starts.shape[0])

    @property
    def first_scored(self) -> np.ndarray:
        """The first target position each window scores."""
        return self.starts + 1 + self.score_from

    @property
    def last_scored(self) -> np.ndarray:
        """The last target position each window scores (inclusive)."""
        return self.starts + self.lengths

    def scored_positions(self, ids: np.ndarray) -> np.ndarray:
        """All target positions scored by windows ``ids``, in order."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(a, b + 1) for a, b in zip(self.first_scored[ids], self.last_scored[ids])])

    def window_of(self, positions: Sequence[int]) -> np.ndarray:
        """The window that scores each target position."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 1 or positions.max() >= self.n_tokens):
            raise ValueError(f"target positions must lie in 1..{self.n_tokens - 1}")
        return np.searchsorted(self.first_scored, positions, side="right") - 1


def window_plan(n_tokens: int, seq_len: int, stride: int) -> WindowPlan:
    """The sliding-window schedule of records E2 with an exactly-once tail.

    Windows start at 0, stride, 2 stride, ...; window k > 0 scores the targets in
    (k stride + seq_len - stride, k stride + seq_len], the first window all of 1..seq_len. The last
    window is cut at the end of the stream instead of being shifted back, so it scores only targets no
    earlier window scored (the common ``max(wlen - stride, 0)`` rule re-scores the tail; records I8).
    ``stride == seq_len`` gives standard, non-overlapping evaluation.
    """
    targets = n_tokens - 1
    if targets < 1:
        raise ValueError(f"a stream of {n_tokens} tokens has no target to score")
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride must lie in 1..seq_len ({seq_len}), got {stride}")
    num = 1 + -(-max(0, targets - seq_len) // stride)
    starts = np.arange(num, dtype=np.int64) * stride
    lengths = np.minimum(seq_len, targets - starts)
    score_from = np.full(num, seq_len - stride, dtype=np.int64)
    score_from[0] = 0
    return WindowPlan(n_tokens, seq_len, stride, starts, lengths, score_from)


def rank_slice(count: int, dist: DistInfo) -> slice:
    """This rank's contiguous share of ``count`` items (shares differ by at most one)."""
    return slice(count * dist.rank // dist.world_size, count * (dist.rank + 1) // dist.world_size)


# --------------------------------------------------------------------------------------------------
# Scoring windows
# --------------------------------------------------------------------------------------------------


def autocast_context(device: torch.device, enabled: bool):
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def nll_with_temperature(model: torch.nn.Module, temperature: float) -> NllFn:
    """Per-token NLL of ``softmax(logits / T)``; T = 1 uses the model's own ``nll``."""
    if temperature == 1.0:
        return model.nll

    def nll(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x).float() / temperature
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view_as(y)

    return nll


def resolve_nll(fn, temperature: float = 1.0) -> NllFn:
    """An ``(x, y) -> (B, T)`` NLL function from a model or a callable.

    ``fn`` is a model with ``logits`` (the GPT; T = 1 uses its own ``nll``, so the plain path is
    unchanged), or a callable ``fn(x, y)`` returning either per-token NLL (B, T) or logits (B, T, V).
    A temperature other than 1 divides the logits (records E3: no record uses one); it needs logits.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if hasattr(fn, "logits"):
        return nll_with_temperature(fn, temperature)

    def nll(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = fn(x, y)
        if out.dim() == y.dim():
            if temperature != 1.0:
                raise ValueError("a temperature other than 1 needs logits; this function returns per-token NLL")
            return out
        logits = out.float() if temperature == 1.0 else out.float() / temperature
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view_as(y)

    return nll


def device_tokens(tokens: np.ndarray, device: torch.device) -> torch.Tensor:
    """The stream on ``device`` as int32 (half of int64; windows are cast to int64 per batch)."""
    return torch.from_numpy(np.asarray(tokens).astype(np.int32)).to(device)


def torch_luts(luts: ByteLUTs | None, device: torch.device) -> ByteLUTs | None:
    if luts is None or isinstance(luts.base_bytes, torch.Tensor):
        return luts
    return luts.to_torch(device)


def window_batch(tokens_d: torch.Tensor, starts, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) int64 (B, seq_len) for windows starting at ``starts`` (numpy or a tensor); reads past the
    end repeat the last token (a causal model's outputs at valid positions never see them)."""
    n = tokens_d.shape[0]
    idx = torch.as_tensor(starts, device=tokens_d.device)[:, None] + torch.arange(seq_len + 1, device=tokens_d.device)
    window = tokens_d[idx.clamp_(max=n - 1)].long()
    return window[:, :-1], window[:, 1:]


class ScoreSums:
    """float64 loss / token / byte sums on the device, plus the optional per-position NLL stream."""

    def __init__(self, n_tokens: int, device: torch.device, streams: bool):
        self.device = device
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.nll = torch.zeros(n_tokens, dtype=torch.float32, device=device) if streams else None

    def add(self, positions: torch.Tensor | None, nll: torch.Tensor, nbytes: torch.Tensor | None) -> None:
        """Commit the NLLs of target ``positions`` (1-D tensors of equal length; positions are needed
        only when the stream is kept)."""
        self.sums[0] += nll.double().sum()
        self.sums[1] += nll.numel()
        if nbytes is not None:
            self.sums[2] += nbytes.double().sum()
        if self.nll is not None:
            self.nll[positions] = nll.float()

    def finish(
        self, tokens: np.ndarray, luts: ByteLUTs | None, dist: DistInfo, t0: float, **extra
    ) -> EvalResult:
        """All-reduce the sums (and the stream) across ranks and build the result."""
        if dist.distributed and tdist.is_initialized():
            tdist.all_reduce(self.sums)
            if self.nll is not None:
                tdist.all_reduce(self.nll)
        loss_sum, count, nbytes = self.sums.tolist()
        nll = byte_counts = None
        if self.nll is not None:
            nll = self.nll.cpu().numpy()
            nll[0] = np.nan
            if luts is not None:
                byte_counts = stream_byte_counts(tokens, luts)
        return EvalResult(
            loss=loss_sum / count if count else math.nan,
            bpb=loss_sum / (LN2 * nbytes) if nbytes else math.nan,
            tokens=int(count),
            bytes=int(nbytes),
            seconds=time.perf_counter() - t0,
            nll=nll,
            byte_counts=byte_counts,
            **extra,
        )


def stream_byte_counts(tokens: np.ndarray, luts: ByteLUTs) -> np.ndarray:
    """int16 [N]: bytes of the target at each position (0 at position 0)."""
    np_luts = luts
    if isinstance(luts.base_bytes, torch.Tensor):
        np_luts = ByteLUTs(*(t.cpu().numpy() for t in (luts.base_bytes, luts.has_leading_space, luts.is_boundary)))
    tokens = np.asarray(tokens).astype(np.int64)
    out = np.zeros(tokens.shape[0], dtype=np.int16)
    out[1:] = token_bytes(tokens[:-1], tokens[1:], np_luts)
    return out


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
    luts: ByteLUTs | None,
    device: torch.device,
    autocast: bool,
    events: ScoreEvents | None = None,
    capture: Capture | None = None,
) -> None:
    """Score windows ``ids`` of ``plan`` in batches of ``batch_seqs`` and commit them to ``sums``.

    Not a loop over tokens: each batch is one forward of (B, seq_len) and one masked gather.
    ``events.scored`` is called once per batch, after its NLLs are committed.
    """
    T = plan.seq_len
    ids = np.asarray(ids, dtype=np.int64)
    offsets_T = torch.arange(T, device=device)
    # This rank's window geometry goes to the device once; batches slice it (no per-batch copies).
    starts_W, lo_W, hi_W = (torch.as_tensor(a[ids], device=device) for a in (plan.starts, plan.score_from, plan.lengths))
    need_positions = sums.nll is not None or events is not None
    for b in range(0, len(ids), batch_seqs):
        sl = slice(b, b + batch_seqs)
        x, y = window_batch(tokens_d, starts_W[sl], T)
        with torch.no_grad(), autocast_context(device, autocast):
            nll_BT = nll_fn(x, y)
        mask_BT = (offsets_T >= lo_W[sl, None]) & (offsets_T < hi_W[sl, None])
        positions = (starts_W[sl, None] + 1 + offsets_T)[mask_BT] if need_positions else None
        nbytes = token_bytes(x[mask_BT], y[mask_BT], luts) if luts is not None else None
        sums.add(positions, nll_BT.float()[mask_BT], nbytes)
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
    luts: ByteLUTs | None,
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
    """Score every window of ``plan`` once, this rank's contiguous share of them, and reduce."""
    t0 = time.perf_counter()
    device = torch.device(device)
    luts = torch_luts(luts, device)
    nll_fn = resolve_nll(fn, temperature)
    tokens_d = device_tokens(val_tokens, device)
    sums = ScoreSums(plan.n_tokens, device, return_streams)
    ids = np.arange(plan.num_windows)[rank_slice(plan.num_windows, dist)]
    score_windows(
        nll_fn, tokens_d, plan, ids, batch_seqs=batch_seqs, sums=sums, luts=luts, device=device,
        autocast=autocast, events=events, capture=capture,
    )
    return sums.finish(val_tokens, luts, dist, t0)


def evaluate_standard(
    nll_fn,
    val_tokens: np.ndarray,
    luts: ByteLUTs,
    *,
    seq_len: int,
    batch_tokens: int,
    dist: DistInfo,
    device: torch.device,
    autocast: bool = True,
    temperature: float = 1.0,
    return_streams: bool = False,
) -> EvalResult:
    """Score every target of ``val_tokens`` once with non-overlapping windows of ``seq_len`` (records E1).

    ``nll_fn``: ``model.nll`` (possibly compiled), the model itself, or any ``fn(x, y)`` returning NLL or
    logits (see ``resolve_nll``); ``luts`` numpy or torch tables. A stream that is not ``k * seq_len + 1``
    long ends in one shorter window, so no target is skipped. ``batch_tokens`` counts all ranks
    together. All ranks must call this together.
    """
    plan = window_plan(int(np.asarray(val_tokens).shape[0]), seq_len, seq_len)
    per_batch = max(1, batch_tokens // (dist.world_size * seq_len))
    return evaluate_plan(
        nll_fn, val_tokens, luts, plan, batch_seqs=per_batch, dist=dist, device=device, autocast=autocast,
        temperature=temperature, return_streams=return_streams,
    )


def evaluate_sliding(
    nll_or_logits_fn,
    val_tokens: np.ndarray,
    luts: ByteLUTs,
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
    """Sliding-window evaluation (records E2): a ``seq_len`` window every ``stride`` tokens, each target
    scored exactly once with at least ``seq_len - stride + 1`` tokens of context (all of them in the
    first window). ``batch_seqs`` windows per forward on each rank. All ranks must call this together.
    """
    plan = window_plan(int(np.asarray(val_tokens).shape[0]), seq_len, stride)
    return evaluate_plan(
        nll_or_logits_fn, val_tokens, luts, plan, batch_seqs=batch_seqs, dist=dist, device=device,
        autocast=autocast, temperature=temperature, return_streams=return_streams,
    )


# --------------------------------------------------------------------------------------------------
# Scorer adapters (pgolf_core.scoring): what the compliance checks run
# --------------------------------------------------------------------------------------------------


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def stream_score_from(result: EvalResult) -> StreamScore:
    score = result.stream_score()
    score.info.update(loss=result.loss, tokens=result.tokens, seconds=result.seconds)
    return score


class WindowScorer(Scorer):
    """A fixed model evaluated over a ``WindowPlan``: standard (stride == seq_len) or sliding.

    Single process. ``predictive`` runs the very window that scores each position and returns
    softmax(logits / T) at it, so -log of it at x[j] is the scored NLL.
    """

    def __init__(
        self, model: torch.nn.Module, *, seq_len: int, stride: int = 0, batch_seqs: int = 32,
        temperature: float = 1.0, autocast: bool = False,
    ):
        self.model, self.seq_len, self.stride = model, seq_len, stride or seq_len
        self.batch_seqs, self.temperature, self.autocast = batch_seqs, temperature, autocast
        self.vocab_size = int(model.cfg.vocab_size)
        self.name = "standard" if self.stride == seq_len else f"sliding_s{self.stride}"

    def plan(self, tokens: np.ndarray) -> WindowPlan:
        return window_plan(len(tokens), self.seq_len, self.stride)

    def score_stream(self, tokens: np.ndarray, events: ScoreEvents | None = None) -> StreamScore:
        res = evaluate_plan(
            self.model, tokens, None, self.plan(tokens), batch_seqs=self.batch_seqs, dist=DistInfo(),
            device=model_device(self.model), autocast=self.autocast, temperature=self.temperature,
            return_streams=True, events=events,
        )
        return stream_score_from(res)

    @torch.no_grad()
    def predictive(self, tokens: np.ndarray, positions: Sequence[int]) -> np.ndarray:
        plan = self.plan(tokens)
        positions = np.asarray(positions, dtype=np.int64)
        wids = np.unique(plan.window_of(positions))
        capture = Capture(positions, self.model.logits, self.temperature)
        tokens_d = device_tokens(tokens, model_device(self.model))
        for b in range(0, len(wids), self.batch_seqs):
            wid = wids[b : b + self.batch_seqs]
            x, _ = window_batch(tokens_d, plan.starts[wid], plan.seq_len)
            row_pos = [np.arange(plan.first_scored[w], plan.last_scored[w] + 1) for w in wid]
            with autocast_context(tokens_d.device, self.autocast):
                capture.take(x, plan.starts[wid], row_pos)
        return capture.matrix(positions)


class StandardScorer(WindowScorer):
    """Standard evaluation (non-overlapping windows) of a fixed model, as a ``Scorer``."""

    def __init__(self, model: torch.nn.Module, *, seq_len: int, batch_seqs: int = 32, temperature: float = 1.0):
        super().__init__(model, seq_len=seq_len, stride=seq_len, batch_seqs=batch_seqs, temperature=temperature)


class SlidingScorer(WindowScorer):
    """Sliding-window evaluation of a fixed model, as a ``Scorer``."""

    def __init__(
        self, model: torch.nn.Module, *, seq_len: int, stride: int, batch_seqs: int = 32, temperature: float = 1.0
    ):
        super().__init__(model, seq_len=seq_len, stride=stride, batch_seqs=batch_seqs, temperature=temperature)
