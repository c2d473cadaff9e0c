"""AWQ-lite (#1908): which column blocks of the whole model stay on an int8 grid inside GPTQ.

The activation RMS of input channel j of a linear layer is sqrt(sum x_j^2 / rows). The GPTQ Hessian
H = X^T X / rows already holds sum x_j^2 / rows on its diagonal, so act_rms = sqrt(diag H): no extra
pass and no extra hook (the calibration forward that builds the Hessians is the one that measures it,
with the same rows, ranks and loops).

Saliency of column j of W (rows x cols): act_rms_j * mean_rows |W[:, j]| (how much output a unit of
relative error in that column moves). Candidates are consecutive blocks of ``group`` columns of every
per-row tensor quantized below ``bits`` bits; a block's score is the sum of its columns' saliencies,
and the ``top_k`` best blocks over the whole model are protected. #1908 protects one block of 64
(``AWQ_LITE_GROUP_TOP_K=1``); in its logs the winner was always a block of the tied embedding:
quant tax 0.00867 -> 0.00848 bpb, post-TTT -0.00027, about +87 KB of artifact.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


def act_rms(h: Tensor) -> Tensor:
    """sqrt(mean x_j^2) per input channel from a Hessian H = X^T X / rows."""
    return h.diagonal().float().clamp_min(0).sqrt()


def column_saliency(w: Tensor, rms: Tensor) -> Tensor:
    """act_rms_j * mean_rows |W[:, j]| for every column j."""
    return rms.float() * w.float().abs().mean(dim=0)


def block_scores(w: Tensor, rms: Tensor, group: int) -> list[tuple[float, int, int]]:
    """[(score, start, size)] for the blocks [b * group, (b + 1) * group) of W's columns (the last one
    may be shorter)."""
    sal = column_saliency(w, rms)
    out = []
    for start in range(0, w.shape[1], group):
        size = min(group, w.shape[1] - start)
        out.append((float(sal[start : start + size].sum()), start, size))
    return out


def select_groups(
    weights: Mapping[str, Tensor], hessians: Mapping[str, Tensor], top_k: int, group: int
) -> dict[str, list[list[int]]]:
    """name -> [[start, size], ...] (sorted by start) for the ``top_k`` highest-scoring column blocks
    over all of ``weights`` (the candidate tensors, each with a Hessian in ``hessians``).

    Ties go to the earlier tensor (in ``weights`` order), then the earlier block: the choice is
    deterministic for the same inputs.
    """
    if top_k <= 0:
        return {}
    cands = []
    for t_idx, (name, w) in enumerate(weights.items()):
        h = hessians.get(name)
        if h is None:
            raise ValueError(f"AWQ-lite: no Hessian (activation statistics) for {name}")
        if h.shape[0] != w.shape[1]:
            raise ValueError(
                f"AWQ-lite: Hessian of {name} is {tuple(h.shape)}, weight has {w.shape[1]} columns"
            )
        for score, start, size in block_scores(w, act_rms(h), group):
            cands.append((-score, t_idx, start, size, name))
    cands.sort(key=lambda c: c[:3])
    out: dict[str, list[list[int]]] = {}
    for _, _, start, size, name in cands[:top_k]:
        out.setdefault(name, []).append([start, size])
    return {n: sorted(g) for n, g in out.items()}
