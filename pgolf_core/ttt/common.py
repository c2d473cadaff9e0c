"""Pieces every test-time-training variant shares.

- ``EvalSpec``: how scoring windows are cut (sequence length, stride, batch, temperature, autocast).
- ``select_parameters`` / ``build_optimizer`` / ``cosine_lr``: what adapts and how.
- ``train_on_targets``: gradient steps on a contiguous range of target positions that the caller
  guarantees are already scored, with rank-invariant gradient averaging and ``ScoreEvents.updated``
  reported after every step.
- ``TTTScorer``: the ``pgolf_core.scoring.Scorer`` adapter each variant subclasses.

Every variant works on a deep copy of the caller's model (``pgolf_core.model.roles`` survive it via
``record_roles``), so evaluating with TTT never changes the weights it was given.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from pgolf_core.config import RunConfig, TTTConfig
from pgolf_core.config.eval_sections import TiltConfig
from pgolf_core.data.tokenizer_bytes import ByteLUTs
from pgolf_core.dist import DistInfo
from pgolf_core.eval import (
    Capture,
    EvalResult,
    NllFn,
    ScoreSums,
    TargetBytes,
    device_target_bytes,
    device_tokens,
    rank_slice,
    stream_score_from,
    window_batch,
)
from pgolf_core.model.logits import asym_softcap_parameters
from pgolf_core.runtime import autocast_context, model_device
from pgolf_core.scoring import ScoreEvents, Scorer, StreamScore
from pgolf_core.ttt.tilt import TokenTilt, tilt_rows


@dataclass(frozen=True)
class EvalSpec:
    """How a TTT variant scores: window length, sliding stride (0: stride = seq_len, i.e. non-overlapping
    windows), windows per scoring forward, softmax temperature, bf16 autocast on CUDA."""

    seq_len: int
    stride: int = 0
    batch_seqs: int = 32
    temperature: float = 1.0
    autocast: bool = True

    @property
    def window_stride(self) -> int:
        return self.stride or self.seq_len

    @classmethod
    def from_config(cls, cfg: RunConfig) -> EvalSpec:
        return cls(
            seq_len=cfg.eval_seq_len,
            stride=cfg.eval.stride,
            batch_seqs=cfg.eval.sliding_batch_seqs,
            temperature=cfg.eval.temperature,
            autocast=cfg.train.autocast,
        )


def working_copy(model: nn.Module) -> nn.Module:
    """A deep copy to adapt; the caller's weights are never touched."""
    work = copy.deepcopy(model)
    work.eval()  # no dropout anywhere; eval() only documents that scoring and training share one mode
    return work


LogFn = Callable[[str], None]


@dataclass(frozen=True)
class TTTInputs:
    """Everything a TTT variant (and ``run_ttt``) is given, in one object built once: by
    ``from_config`` for a run, by ``TTTScorer`` for the compliance checks, by a test by hand.

    ``target_bytes``: the byte source of ``tokens`` (``eval.TargetBytes``: the tokenizer tables, or the
    CaseOps sidecar of the validation stream; plain ``ByteLUTs`` are accepted); None scores tokens only
    (no bytes, as the Scorer adapters do). ``events`` receives
    ``scored`` / ``updated`` as they happen; ``capture`` records full distributions at chosen positions;
    ``log`` takes progress lines (None: print on rank 0); ``tilt``: the token-only tilt's knobs to apply
    to the scored loss (``eval.tilt``; None: plain TTT).
    """

    model: nn.Module
    tokens: np.ndarray
    target_bytes: TargetBytes | ByteLUTs | None
    ttt: TTTConfig
    spec: EvalSpec
    dist: DistInfo
    device: torch.device
    return_streams: bool = False
    events: ScoreEvents | None = None
    capture: Capture | None = None
    log: LogFn | None = None
    tilt: TiltConfig | None = None

    @classmethod
    def from_config(
        cls,
        model: nn.Module,
        tokens: np.ndarray,
        target_bytes: TargetBytes | ByteLUTs | None,
        cfg: RunConfig,
        *,
        dist: DistInfo,
        device: torch.device,
        return_streams: bool = False,
        events: ScoreEvents | None = None,
        tilt: bool = False,
    ) -> TTTInputs:
        """The inputs of a run: ``cfg.ttt``; scoring windows per ``cfg.eval`` (``EvalSpec.from_config``);
        with ``tilt`` the tilt of ``cfg.eval.tilt`` on the scored loss (stage q_ttt_tilt)."""
        return cls(
            model,
            tokens,
            target_bytes,
            cfg.ttt,
            EvalSpec.from_config(cfg),
            dist,
            device,
            return_streams,
            events,
            tilt=cfg.eval.tilt if tilt else None,
        )


@dataclass
class Work:
    """What every variant works with, made by ``start``: the start time, the device with the byte source
    and the tokens on it, the working copy of the model, the score sums of the ``n``-token stream, and
    the tilt's hints when ``inputs.tilt`` asks for it."""

    inputs: TTTInputs
    t0: float
    device: torch.device
    target_bytes: TargetBytes | None
    model: nn.Module
    tokens_d: torch.Tensor
    n: int
    sums: ScoreSums
    tilt: TokenTilt | None = None

    def finish(self, info: dict, **extra) -> EvalResult:
        """All ranks' sums as the result, with the variant's ``info`` (and ``notes`` / ``compliant``);
        with the tilt, ``info["tilt"]`` says how many committed targets it tilted and the build time."""
        res = self.sums.finish(
            self.inputs.tokens, self.target_bytes, self.inputs.dist, self.t0, info=info, **extra
        )
        if self.tilt is None:
            return res
        return replace(res, info={**res.info, "tilt": self.tilt.info(res.committed)})


def start(inputs: TTTInputs) -> Work:
    """What every variant starts from (the timer starts here, so the tilt's hints are built inside it)."""
    t0 = time.perf_counter()
    device = torch.device(inputs.device)
    target_bytes, model = device_target_bytes(inputs.target_bytes, device), working_copy(inputs.model)
    tokens_d, n = device_tokens(inputs.tokens, device), int(np.asarray(inputs.tokens).shape[0])
    sums = ScoreSums(n, device, inputs.return_streams)
    tilt = None if inputs.tilt is None else TokenTilt.build(inputs.tokens, inputs.tilt, device)
    return Work(inputs, t0, device, target_bytes, model, tokens_d, n, sums, tilt)


def select_parameters(
    model: nn.Module, freeze_first_blocks: int = 0, *, softcap_scalars: bool = False
) -> list[nn.Parameter]:
    """All parameters but those of the first ``freeze_first_blocks`` blocks; sets ``requires_grad``.

    #461's code froze the first 2 blocks by default; #549 ran with 0 frozen. The AsymLogit scalars
    (model.logit_softcap_asym, #1923) are left out unless ``softcap_scalars``: only the phased global
    SGD pass trains them.
    """
    frozen = {id(p) for block in list(model.blocks)[:freeze_first_blocks] for p in block.parameters()}
    if not softcap_scalars:
        frozen |= {id(p) for p in asym_softcap_parameters(model)}
    params = []
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
        if p.requires_grad:
            params.append(p)
    return params


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def build_optimizer(
    params: Sequence[nn.Parameter],
    kind: str,
    lr: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """SGD with momentum (#461/#549/#1413: 0.9) or AdamW. The defaults are ``TTTConfig``'s (momentum,
    weight_decay) and torch's AdamW's (betas, eps); tests/eval/test_ttt_chunk.py holds them equal."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    raise ValueError(f"unknown TTT optimizer {kind!r}; expected sgd or adamw")


def cosine_lr(base: float, index: int, count: int, schedule: str = "cosine") -> float:
    """base * (1 + cos(pi * index / count)) / 2, or ``base`` for the constant schedule."""
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise ValueError(f"unknown LR schedule {schedule!r}; expected cosine or constant")
    return base * 0.5 * (1.0 + math.cos(math.pi * index / max(count, 1)))


def allreduce_grads(params: Sequence[nn.Parameter], dist: DistInfo) -> None:
    """Sum gradients over ranks (each rank's loss is already divided by the global target count, so
    the sum is the global mean: 2 ranks give the same step as 1 process)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not (dist.distributed and tdist.is_initialized()):
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    tdist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


@dataclass(frozen=True)
class TrainRange:
    """Target positions [first, end) of the stream to train on, cut into ``seq_len`` sequences; the
    sequence holding targets p..q reads the inputs x[p-1..q-1]."""

    first: int
    end: int
    seq_len: int

    @property
    def num_seqs(self) -> int:
        return max(0, -(-(self.end - self.first) // self.seq_len))

    def starts(self) -> np.ndarray:
        return self.first - 1 + np.arange(self.num_seqs, dtype=np.int64) * self.seq_len

    def lengths(self) -> np.ndarray:
        return np.minimum(self.seq_len, self.end - 1 - self.starts())


def train_on_targets(
    loss_fn: NllFn,
    params: Sequence[nn.Parameter],
    opt: torch.optim.Optimizer,
    tokens_d: torch.Tensor,
    span: TrainRange,
    *,
    epochs: int,
    batch_seqs: int,
    lr: float,
    grad_clip: float,
    dist: DistInfo,
    device: torch.device,
    autocast: bool,
    events: ScoreEvents | None = None,
    kind: str = "ttt_step",
) -> int:
    """``epochs`` passes over ``span`` in batches of ``batch_seqs`` sequences (all ranks together; each
    batch's sequences are split across ranks); one optimizer step per batch. Returns the step count.

    The caller guarantees every target of ``span`` is already scored. The gradient is the mean NLL
    over the batch's targets, all-reduced, then clipped to ``grad_clip``: the averaged gradient, as
    the DDP records (#549) clip it, not each rank's local one as the banked-Muon code does.
    """
    for group in opt.param_groups:
        group["lr"] = lr
    starts, lengths = span.starts(), span.lengths()
    T = span.seq_len
    offsets_T = torch.arange(T, device=device)
    steps = 0
    for _ in range(epochs):
        for b in range(0, span.num_seqs, batch_seqs):
            gstarts, glens = starts[b : b + batch_seqs], lengths[b : b + batch_seqs]
            total = int(glens.sum())
            mine = rank_slice(len(gstarts), dist)
            if mine.stop > mine.start:
                x, y = window_batch(tokens_d, gstarts[mine], T)
                mask_BT = offsets_T < torch.as_tensor(glens[mine], device=device)[:, None]
                with autocast_context(device, autocast):
                    nll_BT = loss_fn(x, y)
                (nll_BT.float()[mask_BT].sum() / total).backward()
            allreduce_grads(params, dist)
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps += 1
            if events is not None:
                events.updated(
                    np.concatenate([np.arange(s + 1, s + 1 + n) for s, n in zip(gstarts, glens)]), kind
                )
    return steps


class Timer:
    """Accumulated seconds of named phases (score / train) for the TTT info dict."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, name: str, t0: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


class TTTScorer(Scorer):
    """``Scorer`` adapter for a TTT variant: single process, on the model's device, no autocast.

    Subclasses name their variant (``variant``: a function of ``TTTInputs``, scoring with
    target_bytes=None: a ``StreamScore`` holds NLLs only, no bytes are needed). ``predictive`` reruns
    the variant and captures the full distribution at each requested position from the very forward
    that scored it, stopping once all are captured, so the state is exactly the one scoring saw. The model
    passed in is never changed. With ``tilt`` (stage q_ttt_tilt) the scored loss is tilted and
    ``predictive`` returns the tilted rows (``tilt.tilt_rows``).
    """

    variant: Callable[[TTTInputs], EvalResult]

    def __init__(self, model: nn.Module, ttt: TTTConfig, spec: EvalSpec, tilt: TiltConfig | None = None):
        self.model, self.ttt, self.spec, self.tilt = model, ttt, spec, tilt
        self.vocab_size = int(model.cfg.vocab_size)
        if tilt is not None:
            self.name = f"{type(self).name}_tilt"

    def run(self, tokens: np.ndarray, events: ScoreEvents | None, capture: Capture | None) -> EvalResult:
        inputs = TTTInputs(
            self.model,
            tokens,
            None,
            self.ttt,
            replace(self.spec, autocast=False),
            DistInfo(),
            self.device,
            return_streams=True,
            events=events,
            capture=capture,
            log=lambda _msg: None,
            tilt=self.tilt,
        )
        return self.variant(inputs)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def score_stream(self, tokens: np.ndarray, events: ScoreEvents | None = None) -> StreamScore:
        return stream_score_from(self.run(np.asarray(tokens), events, None))

    def predictive(self, tokens: np.ndarray, positions: Sequence[int]) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 1 or positions.max() >= len(tokens)):
            raise ValueError(f"target positions must lie in 1..{len(tokens) - 1}")
        capture = Capture(positions, logits_fn=None, temperature=self.spec.temperature)
        self.run(np.asarray(tokens), None, capture)
        rows = capture.matrix(positions)
        return rows if self.tilt is None else tilt_rows(rows, tokens, positions, self.tilt)
