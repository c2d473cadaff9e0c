"""Full-Hessian GPTQ (#1019, from #535/#609): Hessian collection with forward hooks, and the rounding pass.

H = X^T X / rows for the input X of every linear layer, accumulated over calibration batches. With a
process group up, the sums and the row counts are all-reduced before dividing, so 8 ranks give the
Hessian of all their batches together (the public records forgot this: each rank quantized with its
own Hessian). The tied embedding is quantized as the LM head: its Hessian comes from the final-norm
output that the head reads (#1394).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from pgolf_core.dist import DistInfo
from pgolf_core.model.gpt import GPT
from pgolf_core.quant.classify import classify, unwrap
from pgolf_core.quant.schemes import FineCols
from pgolf_core.runtime import autocast_context, model_device


class Hessians(dict):
    """weight name -> H (in x in, fp32, CPU), normalized by the rows each layer saw.

    Attributes: rows (name -> rows summed over ranks), batches (this rank), seconds (wall time of the
    collection, including the all-reduce: calibration time counts against the training budget).
    """

    rows: dict[str, int]
    batches: int
    seconds: float


def _hook_targets(model: nn.Module) -> dict[str, nn.Linear]:
    """name of the weight -> Linear module, for every linear whose weight is a 2-D state-dict entry."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) in names:
            out[names[id(module.weight)]] = module
    return out


@torch.no_grad()
def collect_hessians(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], dist: DistInfo | None = None
) -> Hessians:
    """H = sum X^T X / rows for every linear input (and the tied embedding's final-norm output).

    ``batches``: (x, y) int64 token tensors (y unused). All ranks must call this together when a
    process group is up (``dist`` None: all-reduce whenever one is initialized with world size > 1).
    q, k and v read the same tensor, so its X^T X is computed once and shared.
    """
    t0 = time.perf_counter()
    model = unwrap(model)  # hooks must sit on the eager modules, not on a compiled / DDP wrapper
    device = model_device(model)
    targets = _hook_targets(model)
    sums: dict[str, Tensor] = {}
    rows: dict[str, int] = {}
    last: list = [None, -1, None]  # (input tensor, its version, its X^T X): q/k/v share one input

    def xtx(inp: Tensor) -> Tensor:
        if last[0] is not inp or last[1] != inp._version:
            x = inp.reshape(-1, inp.shape[-1]).float()
            last[:] = [inp, inp._version, x.T @ x]
        return last[2]

    def make_hook(name: str):
        def hook(_module, args, _out):
            inp = args[0]
            h = xtx(inp)
            if name in sums:
                sums[name].add_(h)
            else:
                sums[name] = h.clone()
            rows[name] = rows.get(name, 0) + inp.numel() // inp.shape[-1]

        return hook

    # The tied embedding is the head: its input is the final-normed hidden state (#1394).
    tied_name = None
    if isinstance(model, GPT) and model.lm_head is None:
        tied_name = next(n for n, c in classify(model).items() if c.group == "embed")
    handles = [m.register_forward_hook(make_hook(n)) for n, m in targets.items()]
    was_training = model.training
    model.eval()
    n_batches = 0
    try:
        for x, _y in batches:
            x = x.to(device, non_blocking=True)
            # bf16 on CUDA: calibrate with the activations the quantized model is evaluated on
            with autocast_context(device):
                if isinstance(model, GPT):
                    h = model.hidden(x)  # the logits are not needed: skip the vocab projection
                    if tied_name is not None:
                        make_hook(tied_name)(None, (h,), None)
                else:
                    model(x)
            last[:] = [None, -1, None]
            n_batches += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("collect_hessians got no calibration batches")
    names = sorted(sums)
    counts = torch.tensor([rows[n] for n in names], dtype=torch.float64, device=device)
    world = (
        (dist.distributed if dist is not None else True) and tdist.is_available() and tdist.is_initialized()
    )
    if world and tdist.get_world_size() > 1:
        for n in names:
            tdist.all_reduce(sums[n])
        tdist.all_reduce(counts)
    out = Hessians({n: (sums[n] / counts[i].item()).cpu() for i, n in enumerate(names)})
    out.rows = {n: int(counts[i].item()) for i, n in enumerate(names)}
    out.batches = n_batches
    out.seconds = time.perf_counter() - t0
    return out


def _inverse_cholesky_upper(h: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U), damping raised x10 until H is positive definite."""
    mean_diag = float(h.diagonal().mean())
    base = damp * mean_diag
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    for attempt in range(6):
        # damp = 0 asks for none; if H is then singular, fall back to a tiny fraction of mean(diag H).
        lam = base * 10**attempt if base > 0 else (0.0 if attempt == 0 else mean_diag * 10.0 ** (attempt - 7))
        chol, info = torch.linalg.cholesky_ex(h + lam * eye)
        if int(info) == 0:
            u, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
            if int(info) == 0:
                return u
    raise torch.linalg.LinAlgError("GPTQ: Hessian is not positive definite even with 1e5x damping")


@torch.no_grad()
def gptq_quantize(
    w: Tensor,
    h: Tensor,
    scale16: Tensor,
    qmax: int,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = True,
    fine: FineCols | None = None,
) -> Tensor:
    """GPTQ rounding of W (rows x cols) with fixed per-row scales; returns q int8 (rows x cols).

    Minimizes the layer-output error ||(W - Q s) X^T||^2 = tr(E H E^T) greedily, column by column
    (Frantar et al. 2022, as #1019 runs it; #1019: 1.1194 -> 1.1147 bpb with XSA-all and a bigger bigram):
      1. dead inputs (H_jj = 0) get H_jj = 1 and a zero weight column; lam = damp * mean(diag H) is
         added to the diagonal (#1019 added it at collection and again here; we add it once);
      2. act-order: columns in decreasing diag(H), the most active inputs first;
      3. U = upper Cholesky factor of H^-1, so row j of U (from j on) is the OBS update direction for
         column j given that columns < j are already fixed;
      4. blocks of ``block_size`` columns: column j is rounded, its error err = (w_j - q_j s) / U_jj is
         pushed onto the block's remaining columns through U_j,j+1:, and after the block the block's
         errors are pushed onto all later columns in one matmul (the "lazy batch" update);
      5. the permutation is undone.
    Invariants: the scales never change (the clip rule fixed them), so q stays in [-qmax, qmax] and the
    stored form is the same as round-to-nearest's; with H = I (uncorrelated unit inputs) the updates
    vanish and GPTQ is exactly round-to-nearest.
    ``fine`` (AWQ-lite, #1908): those columns are rounded with their own per-row scale and range in the
    same pass; their rounding errors propagate like any other column's. Without it the pass is the
    plain one, operation for operation.
    """
    w = w.detach().float().clone()
    h = h.detach().float().clone()
    rows, cols = w.shape
    if h.shape != (cols, cols):
        raise ValueError(f"GPTQ: Hessian {tuple(h.shape)} does not match a weight with {cols} columns")
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(cols)
    w, h = w[:, perm], h[perm][:, perm]
    u = _inverse_cholesky_upper(h, damp)
    s = scale16.float()
    # per permuted column: (scale, qmax); the fine columns get the finer grid
    grid = [(s, qmax)] * cols
    if fine is not None:
        fine_grid = (fine.scale16.float(), fine.qmax)
        is_fine = torch.zeros(cols, dtype=torch.bool)
        is_fine[fine.cols] = True
        for i in torch.nonzero(is_fine[perm]).flatten().tolist():
            grid[i] = fine_grid
    q = torch.zeros(rows, cols, dtype=torch.float32)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w_blk = w[:, i1:i2].clone()
        err_blk = torch.zeros_like(w_blk)
        u_blk = u[i1:i2, i1:i2]
        for j in range(i2 - i1):
            col = w_blk[:, j]
            s, qm = grid[i1 + j]
            q_col = torch.clamp(torch.round(col / s), -qm, qm)
            q[:, i1 + j] = q_col
            err = (col - q_col * s) / u_blk[j, j]
            w_blk[:, j + 1 :] -= err[:, None] * u_blk[j, j + 1 :][None, :]
            err_blk[:, j] = err
        w[:, i2:] -= err_blk @ u[i1:i2, i2:]
    inv = torch.argsort(perm)
    return q[:, inv].to(torch.int8).contiguous()


def output_error(w: Tensor, w_hat: Tensor, h: Tensor) -> float:
    """tr((W - W^) H (W - W^)^T): the summed squared layer-output error per calibration row."""
    e = w.float() - w_hat.float()
    return float(((e @ h.float()) * e).sum())
