"""Muon: momentum SGD whose update for each weight matrix is replaced by its nearest semi-orthogonal matrix.

``orthogonalize`` is the Newton-Schulz iteration as a pure function (the baseline's quintic, or
#1787's Polar Express); ``Muon`` is a plain ``torch.optim.Optimizer`` that works with or without a
process group (one code path for 1 and 8 ranks, so the CPU tests exercise the distributed update).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.distributed as dist
from torch import Tensor

# (a, b, c) of the quintic X <- aX + (bA + cA^2)X, A = X X^T. The baseline's (and modded-nanogpt's) fixed
# triple: steep slope at 0 (a = 3.4445) so small singular values grow fast; the price is that the
# iteration does not converge to 1 but oscillates in a band around it.
QUINTIC = (3.4445, -4.7750, 2.0315)

# Polar Express (PR #1344 via #1787/#1851/#1855): one minimax-tuned triple per iteration, used in order.
# #1787 reports Polar-NS + MIN_LR + sparse gate + fused CE together at -0.00214 bpb vs #1736.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

COEFFICIENT_SETS = ("quintic", "polar_express")


def ns_coefficients(coefficients: str, steps: int) -> list[tuple[float, float, float]]:
    """The (a, b, c) triple of each of ``steps`` iterations; polar_express reuses its last triple past 5."""
    if steps < 1:
        raise ValueError(f"Newton-Schulz needs at least one step, got steps={steps}")
    if coefficients == "quintic":
        return [QUINTIC] * steps
    if coefficients == "polar_express":
        return [POLAR_EXPRESS[min(i, len(POLAR_EXPRESS) - 1)] for i in range(steps)]
    raise ValueError(
        f"unknown Newton-Schulz coefficients {coefficients!r}; expected one of {COEFFICIENT_SETS}"
    )


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on accelerators, like the records; fp32 on CPU, where bf16 matmuls have no fast path
    (measured on the 2-core dev VM: a 512x512 bf16 matmul is ~100x slower than fp32)."""
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def orthogonalize(
    G: Tensor,
    steps: int = 5,
    coefficients: str = "quintic",
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Approximate the polar factor U V^T of G = U S V^T by a Newton-Schulz iteration (bf16 on GPU).

    Each step maps every singular value s to a s + b s^3 + c s^5 and leaves U and V alone, so the output
    is U f(S) V^T with f(S) close to 1 (not exactly: see ``QUINTIC``). Works on a 2-D matrix or a
    batch of matrices stacked on dim 0 (each normalized on its own).

    Args:
        G: the update, shape (rows, cols) or (batch, rows, cols).
        steps: number of iterations (5 in every record).
        coefficients: "quintic" (baseline) or "polar_express" (#1787+).
        eps: added to the Frobenius norm so a zero update stays zero.
        dtype: compute dtype; default ``compute_dtype(G.device)``.

    Returns:
        A tensor of G's shape and dtype.
    """
    if G.ndim not in (2, 3):
        raise ValueError(
            f"orthogonalize expects a 2-D matrix or a 3-D batch of them, got shape {tuple(G.shape)}"
        )
    schedule = ns_coefficients(coefficients, steps)
    # bf16 like the records on GPU: tensor-core speed, and the iteration tolerates its 8-bit mantissa.
    X = G.to(dtype or compute_dtype(G.device))
    # Scaling by the Frobenius norm puts every singular value in [0, 1], where the polynomials are tuned.
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    # Iterate on the short side: A = X X^T is then the smaller Gram matrix.
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    for a, b, c in schedule:
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transposed:
        X = X.mT
    return X.to(G.dtype)


def muon_scale(shape: torch.Size) -> float:
    """sqrt(max(1, rows/cols)): keeps the per-entry update RMS of tall matrices comparable (the
    baseline's scale)."""
    return math.sqrt(max(1.0, shape[-2] / shape[-1]))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, as in the challenge baseline (+ #549's decoupled WD, #1285's
    row norm).

    Per weight matrix W with gradient g (already averaged across ranks, e.g. by DDP), each step:

        W <- W * (1 - lr * weight_decay)             decoupled WD (#549+), lr includes the schedule
        buf <- momentum * buf + g
        u <- g + momentum * buf    (nesterov)   or   u <- buf
        u <- u / max(||u_row||_2, 1e-7) per row      only with row_norm (MuonEq-R, #1285)
        u <- orthogonalize(u) * sqrt(max(1, rows / cols))
        W <- W - lr * round(u)          round: to bf16 on GPU (the baseline's buffer), fp32 on CPU

    Invariants:
    - The direction ``orthogonalize(u)`` has its singular values in a band around 1 whatever the
      gradient's scale (tests/optim/test_orthogonalize.py, condition number 100: quintic [0.68, 1.20],
      polar express [0.85, 1.14]), so ``lr`` sets the spectral size of the step.
    - The update is rounded to the communication dtype (``compute_dtype``: bf16 on GPU as the
      baseline, fp32 on CPU) before it is applied at every world size, so a run's numerics do not
      depend on how many ranks share the work.
    - Distributed (world_size > 1): parameter i of a group is orthogonalized by rank i % world_size
      into a flat buffer that is zero elsewhere; one all_reduce(SUM) per group gives every rank
      every update (x + 0 is exact, so all ranks apply bitwise-identical updates).
    - The momentum buffer of every parameter is kept on every rank (a cheap elementwise update), unlike
      the baseline which keeps only the owner's: rank 0's ``state_dict`` is then complete for resume.
    - A parameter whose ``grad`` is None is left untouched, weight decay included (under DDP every
      rank agrees on which grads are None, which the shared buffer relies on).

    Parameters may be 2-D, or 3-D stacks of equally shaped matrices ("banks", #549 from #399) that are
    orthogonalized slice by slice.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.95,
        nesterov: bool = True,
        backend_steps: int = 5,
        coefficients: str = "quintic",
        row_norm: bool = False,
        weight_decay: float = 0.0,
    ):
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(
                f"bad Muon hyperparameters: lr={lr}, momentum={momentum}, weight_decay={weight_decay}"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "backend_steps": backend_steps,
            "coefficients": coefficients,
            "row_norm": row_norm,
            "weight_decay": weight_decay,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            ns_coefficients(group["coefficients"], group["backend_steps"])  # fail now, not at step 1
            for p in group["params"]:
                if p.ndim not in (2, 3):
                    raise ValueError(
                        f"Muon takes 2-D matrices or 3-D banks, got a tensor of shape {tuple(p.shape)}"
                    )

    def _direction(self, p: Tensor, group: dict) -> Tensor:
        """The scaled, orthogonalized update of one parameter (momentum already applied), rounded to
        the communication dtype."""
        g, buf = p.grad, self.state[p]["momentum_buffer"]
        u = g.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
        if group["row_norm"]:
            # MuonEq-R (#1285, arXiv:2603.28254): equalize row norms before NS; ~0.001 bpb, zero bytes.
            u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-7)
        u = orthogonalize(u, group["backend_steps"], group["coefficients"])
        return (u * muon_scale(p.shape)).to(compute_dtype(p.device))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = _world()
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            for p in params:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                state["momentum_buffer"].mul_(mu).add_(p.grad)

            if world == 1:
                updates = [self._direction(p, group) if p.grad is not None else None for p in params]
            else:
                offsets = [0, *itertools.accumulate(p.numel() for p in params)]
                flat = torch.zeros(
                    offsets[-1], dtype=compute_dtype(params[0].device), device=params[0].device
                )
                for i, p in enumerate(params):
                    if i % world == rank and p.grad is not None:
                        flat[offsets[i] : offsets[i + 1]] = self._direction(p, group).flatten()
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                updates = [
                    flat[offsets[i] : offsets[i + 1]].view_as(p) if p.grad is not None else None
                    for i, p in enumerate(params)
                ]

            for p, u in zip(params, updates):
                if u is None:
                    continue
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(u.to(p.dtype), alpha=-lr)
        return loss
