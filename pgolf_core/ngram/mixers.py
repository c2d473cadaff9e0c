"""Mixers: the model's and the cache's distributions combined into one distribution per position.

Every mixer forms a convex combination of full distributions with weights that depend on the prefix
alone (the model's entropy, whether the cache matched, past performance), never on x_j, so the
mixture is a distribution and reading its target entry is legitimate.

Legend for array suffixes: n positions, V vocabulary, E experts.
"""

from __future__ import annotations

import math

import numpy as np

from pgolf_core.config import NgramConfig

# Hedge log-weights are kept within [-20, 0] after each update, as in #909: an expert's weight never
# drops below e^-20 ~ 2e-9, so it can come back when the text changes.
HEDGE_LOGW_FLOOR = -20.0
HEDGE_EXPERTS = ("model", "mix", "cache")


def entropy_nats(lp_nV: np.ndarray, p_nV: np.ndarray | None = None) -> np.ndarray:
    """Shannon entropy (nats) of each row of log-probabilities, computed in float32; float64 [n].

    float32 because this is the costliest step of the entropy mixers (one exp per vocabulary entry):
    on this 2-core VM numpy's float32 exp runs 25 ms per 8192 x 1024 block against 117 ms in
    float64. alpha is a smooth function of H, so float32's ~1e-6 relative error does not matter;
    scoring and ``predictive`` run the same computation, so they agree bit for bit. ``p_nV``:
    exp(lp_nV) when the caller already has it.
    """
    lp32 = np.asarray(lp_nV, dtype=np.float32)
    p32 = np.exp(lp32) if p_nV is None else p_nV
    return -np.einsum("nv,nv->n", p32, lp32).astype(np.float64)


def entropy_alpha(h_n: np.ndarray, cfg: NgramConfig) -> np.ndarray:
    """alpha = alpha_min + (alpha_max - alpha_min) * sigmoid(slope * (H - center)).

    The #702/#909 shape (#909: 0.05 + 0.55 sigmoid(2 (H - c))): trust the cache more where the model
    is unsure. H is the model's own entropy at the position, known before x_j is read, so alpha is
    prefix-only (a gate that looks at the target was ruled out in the #659 review; #1437 fixed a hint
    gated on a property of x_p, +0.00284 bpb once fixed).
    """
    s = 1.0 / (1.0 + np.exp(-cfg.entropy_slope * (h_n - cfg.entropy_center)))
    return cfg.alpha_min + (cfg.alpha_max - cfg.alpha_min) * s


class Mixer:
    """Mixes the model's and the cache's distributions into one distribution per position.

    ``target`` gives log p(x_j) of the mixture from the two target entries; ``full`` gives the whole
    mixture [n, V]. Both use the same weights, which depend only on prefix quantities (the model's
    entropy, whether the cache matched, past performance), never on x_j.
    """

    name = "mixer"
    needs_entropy = False
    stateful = False

    def reset(self) -> None:
        pass

    def _alpha(self, h_n: np.ndarray, matched_n: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def target(self, pm_n, q_n, matched_n, h_n):
        """(log p(x_j) [n], expert log-probs [E, n] or None) from target entries of each expert."""
        a_n = self._alpha(h_n, matched_n)
        return np.log(pm_n + a_n * (q_n - pm_n)), None

    def full(self, pm_nV, q_nV, matched_n, h_n, out=None):
        """The mixture [n, V] (dtype of ``q_nV``), written to ``out`` if given (``out`` may be ``q_nV``)."""
        a_n = self._alpha(h_n, matched_n).astype(q_nV.dtype)[:, None]
        mix_nV = np.subtract(q_nV, pm_nV, out=out)
        mix_nV *= a_n
        mix_nV += pm_nV
        return mix_nV

    def update(self, expert_lp_En: np.ndarray) -> None:
        pass


class FixedMixer(Mixer):
    """p = (1 - alpha) p_model + alpha q where the cache matched (any order valid), else p_model."""

    name = "fixed"

    def __init__(self, alpha: float):
        self.alpha = alpha

    def _alpha(self, h_n, matched_n):
        return self.alpha * matched_n


class EntropyMixer(Mixer):
    """As FixedMixer with alpha from the model's entropy (``entropy_alpha``)."""

    name = "entropy"
    needs_entropy = True

    def __init__(self, cfg: NgramConfig):
        self.cfg = cfg

    def _alpha(self, h_n, matched_n):
        return entropy_alpha(h_n, self.cfg) * matched_n


class HedgeMixer(Mixer):
    """Hedge (multiplicative weights) over three normalized experts: model, entropy-mix, cache.

    p = sum_i w_i E_i with w = softmax(log-weights). After a segment is scored, each log-weight gets
    beta * mean_j ln E_i(x_j) over that segment (Hedge with the log loss, the #909/#731 update, beta
    2.0), then the maximum is subtracted and values are clipped to [-20, 0]. A convex combination of
    normalized experts is normalized, and weights only see already-scored tokens, which keeps the
    mixture legal. #909's experts were target-only numbers from an unnormalized cache,
    so its Hedge locked onto the inflated one (w1 = 1 - 2e-9); here every expert is a distribution.
    """

    name = "hedge"
    needs_entropy = True
    stateful = True

    def __init__(self, cfg: NgramConfig):
        self.cfg = cfg
        self.beta = cfg.hedge_beta
        self.reset()

    def reset(self) -> None:
        self.logw = np.full(len(HEDGE_EXPERTS), -math.log(len(HEDGE_EXPERTS)))
        self.weights = np.full(len(HEDGE_EXPERTS), 1.0 / len(HEDGE_EXPERTS))

    def target(self, pm_n, q_n, matched_n, h_n):
        a_n = entropy_alpha(h_n, self.cfg) * matched_n
        e_En = np.stack([pm_n, pm_n + a_n * (q_n - pm_n), q_n])
        return np.log(self.weights @ e_En), np.log(e_En)

    def full(self, pm_nV, q_nV, matched_n, h_n, out=None):
        # w0 pm + w1 ((1 - a) pm + a q) + w2 q, folded into two per-position coefficients that sum to 1
        a_n = entropy_alpha(h_n, self.cfg) * matched_n
        w0, w1, w2 = self.weights
        c_pm = (w0 + w1 * (1.0 - a_n)).astype(q_nV.dtype)[:, None]
        c_q = ((w1 * a_n + w2) / (w0 + w1 * (1.0 - a_n))).astype(q_nV.dtype)[:, None]
        mix_nV = np.multiply(q_nV, c_q, out=out)  # (c_q / c_pm) q + pm, then * c_pm: no temporary
        mix_nV += pm_nV
        mix_nV *= c_pm
        return mix_nV

    def update(self, expert_lp_En: np.ndarray) -> None:
        """Called with the log-probs each expert gave the segment's targets, after they were scored."""
        logw = self.logw + self.beta * expert_lp_En.mean(axis=1)
        logw -= logw.max()
        self.logw = np.maximum(logw, HEDGE_LOGW_FLOOR)  # (np.clip costs 10 us on a 3-vector)
        w = np.exp(self.logw)
        self.weights = w / w.sum()


def build_mixer(cfg: NgramConfig) -> Mixer:
    if cfg.alpha_rule == "fixed":
        return FixedMixer(cfg.alpha)
    if cfg.alpha_rule == "entropy":
        return EntropyMixer(cfg)
    return HedgeMixer(cfg)
