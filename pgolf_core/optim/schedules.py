"""LR multiplier and Muon momentum as pure functions of progress (the baseline's wallclock-aware warmdown;
fraction warmdown with a floor from #1787).

The same multiplier scales every optimizer group (``OptimizerSet.set_lr_multiplier``). There is no LR
warmup: the records' "warmup steps" are compile-warmup steps whose state is restored afterwards.
"""

from __future__ import annotations

from pgolf_core.config import OptimConfig, TrainConfig


def lr_multiplier(step: int, elapsed_s: float, train: TrainConfig) -> float:
    """The LR multiplier for optimizer step ``step`` after ``elapsed_s`` seconds of training time.

    Two warmdown modes:
    - ``warmdown_frac > 0`` (#1394+): progress frac = elapsed / cap under a wallclock cap, step /
      iterations without one; 1 until frac reaches 1 - warmdown_frac, then linear towards 0, floored at
      ``min_lr`` (#1787: 0.1, "the final ~25% keeps delivering updates").
    - otherwise an iteration warmdown of ``warmdown_iters`` steps (BASE/549/1019). Under a cap it is made
      wallclock-aware like the baseline: with the mean step time so far, the warmdown lasts
      warmdown_iters mean steps and ends exactly when the time runs out.
    """
    cap = train.max_wallclock_seconds
    if train.warmdown_frac > 0:
        frac = elapsed_s / cap if cap > 0 else step / max(train.iterations, 1)
        if frac < 1 - train.warmdown_frac:
            return 1.0
        return max((1 - frac) / train.warmdown_frac, train.min_lr)
    if train.warmdown_iters <= 0:
        return 1.0
    if cap <= 0:
        remaining_steps = train.iterations - step
        if remaining_steps > train.warmdown_iters:
            return 1.0
        # Past the last iteration the loop has stopped; clamp rather than go negative.
        return max(remaining_steps / train.warmdown_iters, 0.0)
    mean_step_s = elapsed_s / max(step, 1)
    warmdown_s = train.warmdown_iters * mean_step_s
    remaining_s = max(cap - elapsed_s, 0.0)
    if remaining_s > warmdown_s:
        return 1.0
    # remaining_s <= warmdown_s and warmdown_s == 0 only when the time is already spent.
    return remaining_s / warmdown_s if warmdown_s > 0 else 0.0


def muon_momentum_at(step: int, optim: OptimConfig) -> float:
    """Muon momentum: linear from ``muon_momentum_warmup_start`` to ``muon_momentum`` over the warmup steps.

    BASE 0.85 -> 0.95 over 500 steps; #549+ 0.92 -> 0.99 over 1500; #1514 ends at 0.97 (~-0.0005 bpb).
    """
    n = optim.muon_momentum_warmup_steps
    if n <= 0 or step >= n:
        return optim.muon_momentum
    t = max(step, 0) / n
    return (1 - t) * optim.muon_momentum_warmup_start + t * optim.muon_momentum
